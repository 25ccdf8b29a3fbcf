"""Evidence for the benchmark's policy server: a cosign key that signs the seeded image, and a
scanner that reports it clean, so that its signature and vulnerability rules hold and every
timed pull goes through them (and the blob gate) the way a production pull does.

The signature is the `.sig` manifest cosign writes (one simple-signing layer with the signature
annotation, tag `sha256-<hex>.sig`); the report is Trustyard's generic scan format, posted to
the scanner webhook with the scanner's bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.workloads import BenchError, push_small_blob

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SCANNER = "bench-scanner"


@dataclass
class Evidence:
    """The signing key and the scanner token the policy server trusts."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def public_pem(self) -> str:
        """The key's public half, PEM, for the policy's `trust.keys`."""
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def write_config(self, path: Path) -> Path:
        """A configuration file naming the scanner (for `--config`)."""
        path.write_text(json.dumps({"scanners": [{"name": SCANNER, "token": self.token}]}))
        return path

    async def add(
        self, session: aiohttp.ClientSession, base_url: str, name: str, digest: str
    ) -> None:
        """Sign `name@digest` as cosign does and post a clean scan report of it."""
        host = base_url.split("://", 1)[-1]
        payload = json.dumps(
            {
                "critical": {
                    "identity": {"docker-reference": f"{host}/{name}"},
                    "image": {"docker-manifest-digest": digest},
                    "type": "cosign container image signature",
                },
                "optional": None,
            },
            separators=(",", ":"),
        ).encode()
        signature = self.key.sign(payload, ec.ECDSA(hashes.SHA256()))
        payload_digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        config = json.dumps(
            {
                "architecture": "",
                "os": "",
                "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
                "config": {},
            },
            separators=(",", ":"),
        ).encode()
        config_digest = await push_small_blob(session, base_url, name, config)
        await push_small_blob(session, base_url, name, payload)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [
                    {
                        "mediaType": SIMPLE_SIGNING,
                        "digest": payload_digest,
                        "size": len(payload),
                        "annotations": {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
                    }
                ],
            },
            separators=(",", ":"),
        ).encode()
        tag = digest.replace(":", "-") + ".sig"
        async with session.put(
            f"{base_url}/v2/{name}/manifests/{tag}",
            data=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        ) as resp:
            if resp.status != 201:
                raise BenchError(f"signature push answered {resp.status}: {await resp.text()}")
        report = {
            "format": "trustyard.scan.v1",
            "digest": digest,
            "scanner": {"name": "bench", "version": "1.0"},
            "scanned_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "findings": [],
        }
        async with session.post(
            f"{base_url}/api/v1/scans",
            data=json.dumps(report).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        ) as resp:
            if resp.status != 201:
                raise BenchError(f"scan report answered {resp.status}: {await resp.text()}")
