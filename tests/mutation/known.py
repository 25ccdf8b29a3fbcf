"""The mutants a review found surviving, written out by hand: each must now be killed.

    python3 tests/mutation/known.py [NAME-PART ...]

Each entry replaces one piece of a security check (a comparison removed, a condition made
`True`) in a throw-away copy of the tree and runs the tests that must notice. cosmic-ray
(`run.py`) finds such mutants mechanically; these are the ones that changed a security decision
and survived before the tests under tests/security/ were written, kept so they cannot come back.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from run import ROOT, copy_tree  # type: ignore[import-not-found]


@dataclass(frozen=True)
class Known:
    """One hand-written mutant: in `module`, `old` becomes `new`; `tests` must fail."""

    name: str
    module: str
    old: str
    new: str
    tests: tuple[str, ...]


KEYLESS_TESTS = ("tests/security/test_keyless_identity.py",)
BUNDLE_TESTS = ("tests/security/test_bundle_log_entries.py",)
AUTH_TESTS = ("tests/security/test_auth_decisions.py",)
PROOF_TESTS = ("tests/security/test_bundle_rekor_proofs.py",)

KNOWN = [
    Known(
        "keyless identity (SAN/issuer) match replaced by True",
        "policies/signatures/keyless.py",
        "matched = [i for i in identities if i.matches(who.issuer, who.subjects)]",
        "matched = list(identities)",
        KEYLESS_TESTS,
    ),
    Known(
        "the Rekor entry's certificate not compared with the signing one",
        "policies/signatures/keyless.py",
        "if logged is None or logged != ours:",
        "if False:",
        KEYLESS_TESTS,
    ),
    Known(
        "a private CA's subject not checked",
        "policies/signatures/keyless.py",
        "if authority.subject is None or same_dn(",
        "if authority.subject is not None or same_dn(",
        KEYLESS_TESTS,
    ),
    Known(
        "another Fulcio extension taken as the OIDC issuer",
        "policies/signatures/keyless.py",
        "elif extension.oid == ISSUER_V1 and issuer is None:",
        "elif extension.oid == ISSUER_V1 or issuer is None:",
        KEYLESS_TESTS,
    ),
    Known(
        "a private CA's subject matched when the certificate has more names",
        "policies/signatures/keyless.py",
        "return parts(wanted) == parts(actual)",
        "return parts(wanted) <= parts(actual)",
        KEYLESS_TESTS,
    ),
    Known(
        "a private CA's subject matched when the certificate has fewer names",
        "policies/signatures/keyless.py",
        "return parts(wanted) == parts(actual)",
        "return parts(wanted) >= parts(actual)",
        KEYLESS_TESTS,
    ),
    Known(
        "the second private CA never tried",
        "policies/signatures/keyless.py",
        "            continue\n        if authority.subject is None",
        "            break\n        if authority.subject is None",
        KEYLESS_TESTS,
    ),
    Known(
        "a payload whose digest or reference is not a string accepted",
        "policies/signatures/simple_signing.py",
        "if not isinstance(digest, str) or not isinstance(reference, str):",
        "if not isinstance(digest, str) and not isinstance(reference, str):",
        ("tests/security/test_cosign_payloads.py",),
    ),
    Known(
        "DSSE Rekor payloadHash not compared",
        "policies/signatures/bundles.py",
        'if payload_hash.get("value") != hashlib.sha256(logged.payload).hexdigest():',
        "if False:",
        BUNDLE_TESTS,
    ),
    Known(
        "inclusion-proof checkpoint size/root not compared",
        "policies/signatures/bundles.py",
        "if lines[1:2] != [str(size)] or checkpoint_root != tree_root:",
        "if False:",
        BUNDLE_TESTS,
    ),
    Known(
        "an inclusion proof for the leaf one past the tree",
        "policies/signatures/bundles.py",
        "if not 0 <= index < size:",
        "if not 0 <= index <= size:",
        PROOF_TESTS,
    ),
    Known(
        "an inclusion proof stopping short of the root",
        "policies/signatures/bundles.py",
        '    if sn != 0:\n        raise BundleError("the inclusion proof is too short")',
        '    if sn < 0:\n        raise BundleError("the inclusion proof is too short")',
        PROOF_TESTS,
    ),
    Known(
        "a checkpoint note read only when it has at most three lines",
        "policies/signatures/bundles.py",
        "if len(lines) >= 3 else",
        "if len(lines) <= 3 else",
        PROOF_TESTS,
    ),
    Known(
        "a checkpoint note read only when it has exactly three lines",
        "policies/signatures/bundles.py",
        "if len(lines) >= 3 else",
        "if len(lines) == 3 else",
        PROOF_TESTS,
    ),
    Known(
        "a checkpoint line that is not a signature ending the search",
        "policies/signatures/bundles.py",
        '        if not line.startswith("\\u2014 "):\n            continue',
        '        if not line.startswith("\\u2014 "):\n            break',
        PROOF_TESTS,
    ),
    Known(
        "base64 fields of non-ASCII text not named",
        "policies/signatures/bundles.py",
        '    except (binascii.Error, ValueError):\n        raise BundleError(f"{what}',
        '    except binascii.Error:\n        raise BundleError(f"{what}',
        PROOF_TESTS,
    ),
    Known(
        "an RSA-PSS message signature never tried",
        "policies/signatures/bundles.py",
        "            except InvalidSignature:\n                pss",
        "            except OSError:\n                pss",
        PROOF_TESTS,
    ),
    Known(
        "the per-image signature byte budget never spent",
        "policies/signatures/discovery.py",
        'budget.bytes -= len(content or b"")',
        'budget.bytes -= len(content and b"")',
        ("tests/security/test_signature_cost.py",),
    ),
    Known(
        "manifest and blob DELETE need only pull",
        "registry/auth/middleware.py",
        'DELETE = ("delete",)',
        'DELETE = ("pull",)',
        AUTH_TESTS,
    ),
    Known(
        "a token keeps its access after its holder's role is lowered",
        "registry/auth/middleware.py",
        'missing = [a for a in actions if a not in allowed and "*" not in allowed]',
        "missing = [] if caller.token_access is not None else "
        '[a for a in actions if a not in allowed and "*" not in allowed]',
        AUTH_TESTS,
    ),
    Known(
        "the events HMAC window accepts any future timestamp",
        "registry/events/signing.py",
        "if abs((time.time() if now is None else now) - seconds) > tolerance:",
        "if (time.time() if now is None else now) - seconds > tolerance:",
        ("tests/security/test_event_signatures.py",),
    ),
]


def killed(known: Known, work: Path) -> tuple[bool, str]:
    """Apply the mutant in `work`, run its tests, restore; (killed, why not)."""
    path = work / known.module
    original = path.read_text()
    if original.count(known.old) != 1:
        return False, f"`{known.old}` is not in {known.module} exactly once: update this entry"
    path.write_text(original.replace(known.old, known.new))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *known.tests],
            cwd=work,
            capture_output=True,
            text=True,
            env={"PYTHONDONTWRITEBYTECODE": "1", **dict(__import__("os").environ)},
        )
    finally:
        path.write_text(original)
    return result.returncode != 0, result.stdout[-2000:]


def main() -> int:
    """Run every known mutant (or those whose name contains an argument)."""
    wanted = sys.argv[1:]
    chosen = [k for k in KNOWN if not wanted or any(w in k.name for w in wanted)]
    failures = 0
    with tempfile.TemporaryDirectory(prefix="trustyard-known-") as tmp:
        work = Path(tmp)
        copy_tree(work)
        for known in chosen:
            started = time.monotonic()
            ok, output = killed(known, work)
            verdict = "killed" if ok else "SURVIVED"
            print(f"{verdict:8} {known.name} ({time.monotonic() - started:.0f}s)", flush=True)
            if not ok:
                failures += 1
                print(output)
    print(f"{len(chosen) - failures}/{len(chosen)} known mutants killed")
    return 1 if failures else 0


if __name__ == "__main__":
    assert ROOT.is_dir()
    sys.exit(main())
