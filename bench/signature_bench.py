"""Signature verification speed (issue 5): verifications per second through Trustyard's own
verifiers, offline.

    python -m bench.signature_bench [--seconds 3]

- cosign simple signing, ECDSA P-256, keyed (`policies.signatures.cosign.verify_layer`);
- a Sigstore bundle with a Fulcio certificate against the production trusted root shipped in
  `sigstore` (`policies.signatures.bundles.verify_layer`, the real `bundle_v3_github.whl`
  vector from sigstore-python, copied under tests/policies/vectors/).

Pulls never pay this: proofs are verified once, when the signature is pushed, and recorded.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures import bundles, cosign, simple_signing
from policies.signatures.trust import TrustConfig, parse_trust

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "policies" / "vectors"
GITHUB = "https://token.actions.githubusercontent.com"
RFC8785_RELEASE = (
    "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2"
)


def _trust(section: dict[str, object]) -> TrustConfig:
    config, problems = parse_trust(section)
    if problems:
        raise SystemExit(f"bad trust section: {problems}")
    return config


def rate(check: Callable[[], bool], seconds: float) -> float:
    """Calls per second of `check` (which must succeed) over about `seconds`."""
    if not check():
        raise SystemExit("the verification to measure does not succeed")
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds and count < 1_000_000:
        check()
        count += 1
    return count / elapsed


def cosign_case() -> Callable[[], bool]:
    """A keyed P-256 simple-signing layer for a made-up image digest."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    trust = _trust({"keys": {"release": {"pem": pem.decode()}}})
    image = "sha256:" + "ab" * 32
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "bench/app"},
                "image": {"docker-manifest-digest": image},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    annotations = {simple_signing.SIGNATURE_ANNOTATION: signature}
    return lambda: all(f.valid for f in cosign.verify_layer(trust, image, payload, annotations))


def bundle_case() -> Callable[[], bool]:
    """The real GitHub-signed bundle of sigstore-python's test wheel, production root."""
    trust = _trust({"identities": {"rfc8785": {"issuer": GITHUB, "subject": RFC8785_RELEASE}}})
    folder = VECTORS / "sigstore-python"
    content = (folder / "bundle_v3_github.whl.sigstore").read_bytes()
    digest = "sha256:" + hashlib.sha256((folder / "bundle_v3_github.whl").read_bytes()).hexdigest()
    return lambda: all(f.valid for f in bundles.verify_layer(trust, digest, content))


def main() -> None:
    """Print verifications per second of each kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    for name, case in (
        ("cosign simple signing, ECDSA P-256", cosign_case),
        ("Sigstore bundle, Fulcio certificate", bundle_case),
    ):
        print(f"{name:40s} {rate(case(), args.seconds):8.0f} verifications/s")


if __name__ == "__main__":
    main()
