"""Events out and scan reports in, through the real docker client: a scanner stand-in on loopback
gets the signed push event, verifies it as the README tells receivers to, posts a Trivy report
with a critical back to the webhook; the next `docker pull` is refused with the rule's reason, and
an exception added to the policy (SIGHUP) lets it through."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.conftest import DockerDaemon, http, make_rootfs_tar
from tests.server_process import RegistryProcess, port_of, reserve_port, start_registry

pytestmark = pytest.mark.e2e

SECRET = "e2e-endpoint-secret-0123456789"
TOKEN = "e2e-trivy-token-0123456789"
TRIVY = (
    Path(__file__).parents[1] / "scans" / "fixtures" / "trivy-alpine-39-high-critical.json"
).read_bytes()
RULE = "no unfixed criticals in prod"

POLICY = f"""\
version: 1
rules:
  - name: {RULE}
    match: {{repositories: ["prod/**"], on: [pull]}}
    require:
      vulnerabilities:
        max: {{critical: 0}}
        require_scan: true
"""
EXCEPTION = """\
        exceptions:
          - {id: CVE-2019-14697, until: 2999-01-31, reason: "musl on x87 only; SEC-42"}
"""


def verified(secret: str, headers: Any, body: bytes) -> bool:
    """The README's receiver check: HMAC-SHA256 of `timestamp.body`, in constant time, and a
    timestamp within five minutes."""
    timestamp = headers.get("Trustyard-Timestamp", "")
    given = headers.get("Trustyard-Signature", "")
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    expected = "sha256=" + mac.hexdigest()
    fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
    return hmac.compare_digest(expected, given) and fresh


@dataclass
class Scanner:
    """A scanner stand-in: takes events on `/hook`; for each verified `image.pushed` posts the
    Trivy fixture to the registry's webhook for the pushed digest."""

    webhook: str
    events: list[dict[str, Any]] = field(default_factory=list)
    unverified: int = 0
    posted: list[tuple[str, int, str]] = field(default_factory=list)  # digest, status, body
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verified(SECRET, request.headers, body):
            self.unverified += 1
            return web.Response(status=401)
        event = json.loads(body)
        self.events.append(event)
        if event["type"] == "dev.trustyard.image.pushed":
            # Answer at once and scan in the background, as a scanner's queue would.
            task = asyncio.create_task(self.scan(event["data"]["digest"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.Response(status=204)

    async def scan(self, digest: str) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.webhook}?digest={digest}&scanner_version=0.57.0",
                data=TRIVY,
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp,
        ):
            self.posted.append((digest, resp.status, await resp.text()))


class Serving:
    """Runs a scanner's aiohttp app on `sock` (bound on 127.0.0.1) in a thread with its own
    loop."""

    def __init__(self, scanner: Scanner, sock: socket.socket) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        app = web.Application()
        app.router.add_post("/hook", scanner.hook)
        self.runner = web.AppRunner(app)

        async def start() -> None:
            await self.runner.setup()
            await web.SockSite(self.runner, sock).start()

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass
class Setup:
    registry: RegistryProcess
    scanner: Scanner
    policy: Path


@pytest.fixture(scope="module")
def scanned(e2e_tmp: Path) -> Iterator[Setup]:
    """A registry sending events to a scanner stand-in, which posts its reports back."""
    hook_socket = reserve_port()
    hook_port = port_of(hook_socket)
    policy = e2e_tmp / "scans-policy.yaml"
    policy.write_text(POLICY)
    config = e2e_tmp / "scans-config.yaml"
    config.write_text(
        json.dumps(
            {
                "events": {
                    "endpoints": [
                        {
                            "name": "scanner",
                            "url": f"http://127.0.0.1:{hook_port}/hook",
                            "events": ["image.pushed", "policy.denied"],
                            "secret": SECRET,
                            # Generous: an event the scanner recorded but answered after
                            # the timeout (a loaded machine) would be sent again.
                            "timeout": "30s",
                        }
                    ],
                    "retry": {"initial": "100ms", "max": "500ms"},
                },
                "scanners": [{"name": "trivy-ci", "token": TOKEN}],
            }
        )
    )
    scanner = Scanner("")  # the registry's port is known once it runs
    serving = Serving(scanner, hook_socket)
    try:
        registry = start_registry(
            e2e_tmp / "scans-data",
            extra_args=["--config", str(config), "--policy", str(policy)],
        )
        scanner.webhook = f"{registry.url}/api/v1/scans"
        try:
            yield Setup(registry, scanner, policy)
        finally:
            registry.stop()
    finally:
        serving.close()


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def status(registry: RegistryProcess, path: str) -> str:
    resp = http("GET", f"{registry.url}/api/v1/images/{path}/status")
    assert resp.status == 200, resp.body
    document = resp.json()
    assert isinstance(document, dict)
    return str(document["status"])


def test_scan_posted_after_the_push_event_blocks_the_pull_until_excepted(
    dockerd: DockerDaemon, scanned: Setup, e2e_tmp: Path
) -> None:
    registry, scanner = scanned.registry, scanned.scanner
    ref = f"{registry.host}/prod/app:v1"
    tarball = e2e_tmp / "scans-image.tar"
    tarball.write_bytes(make_rootfs_tar({"etc/scanned": b"alpine 3.9, pretend\n"}))
    dockerd.docker("import", str(tarball), ref)
    dockerd.docker("push", ref)

    # The push event arrives signed; the scanner answers with its report.
    wait_for(lambda: scanner.posted, "the scanner to post its report")
    (pushed,) = [e for e in scanner.events if e["type"] == "dev.trustyard.image.pushed"]
    assert scanner.unverified == 0
    assert pushed["subject"] == "prod/app:v1"
    assert pushed["data"]["repository"] == "prod/app" and pushed["data"]["tag"] == "v1"
    digest = pushed["data"]["digest"]
    assert scanner.posted[0][:2] == (digest, 201), scanner.posted

    dockerd.docker("rmi", "--force", ref, check=False)
    refused = dockerd.docker("pull", ref, check=False)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert f'rule "{RULE}": 1 critical (CVE-2019-14697) > 0 allowed' in output, output
    assert "scanned by trivy 0.57.0 on " in output
    # The denial went out as an event too, signed like the rest.
    wait_for(
        lambda: any(e["type"] == "dev.trustyard.policy.denied" for e in scanner.events),
        "the policy.denied event",
    )
    assert scanner.unverified == 0

    # Ops accept the finding: an exception in the policy file, then SIGHUP.
    scanned.policy.write_text(POLICY + EXCEPTION)
    registry.process.send_signal(signal.SIGHUP)
    wait_for(lambda: status(registry, "prod/app/v1") == "pullable", "the reload")
    pulled = dockerd.docker("pull", ref)
    assert digest in pulled.stdout
