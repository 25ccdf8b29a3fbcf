"""Real upstreams on loopback for the proxy tests.

- `ReferenceRegistry`: Debian's `docker-registry` (CNCF Distribution 2.8) on port 0, with an
  htpasswd file (bcrypt) and TLS from a private CA generated here; its access log counts what it
  was asked (`count`).
- `Front`: an HTTP server in the test's loop in front of an upstream that forwards every request
  and can be told to cut a blob's body midway, swap its bytes, or answer 503: the faults an
  upstream has, on demand, and a second count of what reached the upstream.
- `push_image`: an image pushed to an upstream over its own API.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from policies.signatures import simple_signing as cosign_module
from tests.server_process import START_TIMEOUT

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

USER, PASSWORD = "mirror", "mirror-secret-pw"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PrivateCA:
    """A CA made for one test and a server certificate for 127.0.0.1 it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def private_ca(directory: Path) -> PrivateCA:
    """Generate a CA and a 127.0.0.1 server certificate under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy-test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = PrivateCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


_LISTENING = re.compile(r"listening on (?:\[[^\]]*\]|[0-9.]+):([0-9]+)")
_ACCESS = re.compile(
    r'msg="response completed".*?http\.request\.method=(\w+) .*?http\.request\.uri="?([^"\s]+)'
    r".*?http\.response\.status=(\d+)"
)


@dataclass
class ReferenceRegistry:
    """A running `docker-registry serve`."""

    root: Path
    ca: PrivateCA | None
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path = field(default_factory=Path)
    extra_config: dict[str, Any] = field(default_factory=dict)  # e.g. {"proxy": {...}}

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (again, on a new port when restarted) and wait for it to listen."""
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": "127.0.0.1:0", "secret": "proxy-test-secret"},
        }
        if self.ca is not None:
            config["http"]["tls"] = {
                "certificate": str(self.ca.cert_file),
                "key": str(self.ca.key_file),
            }
        htpasswd = self.root / "htpasswd"
        if htpasswd.exists():
            config["auth"] = {"htpasswd": {"realm": "proxy-test", "path": str(htpasswd)}}
        config.update(self.extra_config)
        (self.root / "config.yml").write_text(json.dumps(config))
        self.log_path = self.root / f"registry-{time.monotonic_ns()}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [_binary(), "serve", str(self.root / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def requests(self) -> Counter[tuple[str, str]]:
        """(method, path) of every request the registry answered, from its log."""
        text = "".join(
            p.read_text(errors="replace") for p in sorted(self.root.glob("registry-*.log"))
        )
        return Counter((m, uri) for m, uri, _ in _ACCESS.findall(text))


def _binary() -> str:
    found = shutil.which("docker-registry") or shutil.which("registry")
    if found is None:
        pytest.skip("docker-registry is not installed (.ci/install-e2e-deps.sh)")
    return found


def reference_registry(
    root: Path, *, tls: bool = True, auth: bool = True, extra_config: dict[str, Any] | None = None
) -> ReferenceRegistry:
    """Start a reference registry under `root` (htpasswd user `USER`, a private CA)."""
    import bcrypt

    root.mkdir(parents=True, exist_ok=True)
    ca = private_ca(root / "tls") if tls else None
    if auth:
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        (root / "htpasswd").write_text(f"{USER}:{hashed}\n")
    registry = ReferenceRegistry(root, ca, extra_config=extra_config or {})
    registry.start()
    return registry


class Upstream:
    """An aiohttp client of an upstream registry, to push test images there."""

    def __init__(self, url: str, ca: PrivateCA | None, authorization: str | None) -> None:
        self.url = url
        self.ssl: ssl.SSLContext | bool = ca.client_context() if ca else True
        self.authorization = authorization

    def auth_headers(self, **extra: str) -> dict[str, str]:
        return {**extra, **({"Authorization": self.authorization} if self.authorization else {})}

    async def push_blob(self, session: aiohttp.ClientSession, name: str, data: bytes) -> str:
        digest = sha256(data)
        async with session.post(
            f"{self.url}/v2/{name}/blobs/uploads/", headers=self.auth_headers(), ssl=self.ssl
        ) as started:
            assert started.status == 202, await started.text()
            location = started.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        sep = "&" if "?" in location else "?"
        async with session.put(
            f"{location}{sep}digest={digest}",
            data=data,
            headers=self.auth_headers(**{"Content-Type": "application/octet-stream"}),
            ssl=self.ssl,
        ) as done:
            assert done.status == 201, await done.text()
        return digest

    async def put_manifest(
        self,
        session: aiohttp.ClientSession,
        name: str,
        reference: str,
        body: bytes,
        media_type: str = OCI_MANIFEST,
    ) -> str:
        async with session.put(
            f"{self.url}/v2/{name}/manifests/{reference}",
            data=body,
            headers=self.auth_headers(**{"Content-Type": media_type}),
            ssl=self.ssl,
        ) as resp:
            assert resp.status == 201, await resp.text()
        return sha256(body)

    async def push_image(
        self, name: str, tag: str, layers: list[bytes], *, label: str = ""
    ) -> tuple[str, bytes]:
        """Push config, layers and an OCI image manifest; (digest, manifest bytes)."""
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"t": label or tag}},
                "rootfs": {"type": "layers", "diff_ids": [sha256(x) for x in layers]},
            }
        ).encode()
        async with aiohttp.ClientSession() as session:
            await self.push_blob(session, name, config)
            for layer in layers:
                await self.push_blob(session, name, layer)
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": sha256(x), "size": len(x)} for x in layers
                ],
            }
            body = json.dumps(manifest).encode()
            return await self.put_manifest(session, name, tag, body), body


class Front:
    """A forwarding front of an upstream, with faults on demand and a count of requests."""

    def __init__(self, target: str, ssl_context: ssl.SSLContext | None) -> None:
        self.target = target
        self.ssl = ssl_context if ssl_context is not None else True
        self.requests: Counter[tuple[str, str]] = Counter()
        self.answered: Counter[tuple[str, str, int]] = Counter()  # with the upstream's status
        self.cut_after: dict[str, int] = {}  # blob digest -> bytes sent before the cut
        self.swap: dict[str, bytes] = {}  # blob digest or last path segment -> bytes sent
        self.down = False
        self.too_many = False  # answer 429 Too Many Requests (with `retry_after`, when set)
        self.retry_after: str | None = None
        self.too_many_only = ""  # ... only for paths containing this (all when empty)
        self.stall = False  # answer nothing for 30 seconds (a hung upstream)
        self.delay: float = 0.0  # seconds before each blob body
        #: blob digest -> bytes sent before the body waits for `release` (a slow upstream)
        self.hold: dict[str, int] = {}
        self.holding = asyncio.Event()  # set when a body reached its hold
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._session: aiohttp.ClientSession | None = None
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def close(self) -> None:
        self._closing.set()
        self.release.set()
        if self._session is not None:
            await self._session.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def blob_gets(self, digest: str) -> int:
        """GETs of blob `digest` that reached the front."""
        return sum(
            n
            for (m, p), n in self.requests.items()
            if m == "GET" and p.endswith(f"/blobs/{digest}")
        )

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.requests[(request.method, request.path)] += 1
        if self.down:
            raise web.HTTPServiceUnavailable(text="down for the test")
        if self.too_many and self.too_many_only in request.path:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            raise web.HTTPTooManyRequests(text="rate limited for the test", headers=headers)
        if self.stall:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), 30)
            raise web.HTTPServiceUnavailable(text="hung for the test")
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        body = await request.read()
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=body or None,
            ssl=self.ssl,
            allow_redirects=False,
        ) as upstream:
            out_headers = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in ("transfer-encoding", "content-length", "connection")
            }
            self.answered[(request.method, request.path, upstream.status)] += 1
            digest = request.path.rsplit("/blobs/", 1)[-1] if "/blobs/" in request.path else ""
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            if request.method == "HEAD":
                await response.prepare(request)
                return response
            swapped = self.swap.get(digest, self.swap.get(request.path.rsplit("/", 1)[-1]))
            if swapped is not None:
                data = swapped
                response.content_length = len(data)
                await response.prepare(request)
                hold = self.hold.get(digest)
                if hold is not None:
                    await response.write(data[:hold])
                    data = data[hold:]
                    self.holding.set()
                    await self.release.wait()
                await response.write(data)
                await response.write_eof()
                return response
            if self.delay and digest:
                await asyncio.sleep(self.delay)
            await response.prepare(request)
            sent = 0
            hold = self.hold.get(digest)
            async for chunk in upstream.content.iter_chunked(65536):
                if hold is not None and sent + len(chunk) >= hold:
                    await response.write(chunk[: hold - sent])
                    sent, chunk, hold = hold, chunk[hold - sent :], None
                    self.holding.set()
                    await self.release.wait()
                limit = self.cut_after.get(digest)  # read again: a test may set it while held
                if limit is not None and sent + len(chunk) >= limit:
                    await response.write(chunk[: limit - sent])
                    await asyncio.sleep(0.05)
                    assert request.transport is not None
                    request.transport.abort()  # the upstream dies mid-body
                    return response
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
            return response


def random_layer(size: int) -> bytes:
    return os.urandom(size)


def proxy_config(
    upstream_url: str, ca: PrivateCA | None, *, auth: bool = True, **proxy: Any
) -> dict[str, Any]:
    """The `upstreams` and `proxy` settings of a Trustyard proxying `upstream_url` as
    `mirror.test`."""
    item: dict[str, Any] = {
        "name": "ref",
        "url": upstream_url,
        "prefix": "mirror.test",
        "read_timeout": "5s",
        "connect_timeout": "2s",
    }
    if auth:
        item |= {"username": USER, "password": PASSWORD}
    if ca is not None:
        item["ca_file"] = str(ca.ca_file)
    return {"upstreams": [item], "proxy": {"manifest_ttl": "1h", **proxy}}


async def push_signature(upstream, name: str, image: str, payload: bytes, signature: bytes):
    """Push a cosign `.sig` manifest for `image` to the upstream, as cosign writes it."""
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(payload)]},
        },
        separators=(",", ":"),
    ).encode()
    layer = {
        "mediaType": cosign_module.SIMPLE_SIGNING,
        "digest": sha256(payload),
        "size": len(payload),
        "annotations": {cosign_module.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [layer],
    }
    async with aiohttp.ClientSession() as session:
        await upstream.push_blob(session, name, config)
        await upstream.push_blob(session, name, payload)
        tag = image.replace(":", "-") + ".sig"
        await upstream.put_manifest(
            session, name, tag, json.dumps(manifest, separators=(",", ":")).encode()
        )
