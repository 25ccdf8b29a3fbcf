"""What one signature proves about one image: a `Finding`, the unit recorded in the metadata
database and read by the `signature` rule."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass


def short(digest: str) -> str:
    """`sha256:ab12cd34ef56…`: enough of a digest to recognise it in a message."""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}:{hex_part[:12]}…" if len(hex_part) > 12 else digest


@dataclass(frozen=True, slots=True)
class Finding:
    """One signature's verdict for one trusted signer (or for none).

    A signature that proves nothing is recorded too, with `valid=False` and `signer=None`, so the
    denial can say what was found. `detail` is the words a denial shows ("by an unknown key …").
    """

    signature_digest: str  # sha256 of the signature (cosign) or of the envelope/bundle blob
    kind: str  # cosign | cosign-keyless | bundle | bundle-keyed | notation
    valid: bool
    signer: str | None = None
    detail: str = ""
    # The reference the signature signs (a simple signing payload's `docker-reference`, an
    # in-toto subject's name when it names a repository); None: it signs the digest only.
    docker_reference: str | None = None
    predicate_type: str | None = None  # an in-toto statement's predicate type (DSSE bundles)
    # The first instant the proof no longer counts (Unix seconds; it counts while
    # `now < valid_until`): a certificate checked at "now" (private CA, Notation) ends, a
    # Notation signature reaches its own expiry. None: it never expires
    # (a key, or a Fulcio certificate checked at the time Rekor logged the signature).
    valid_until: float | None = None

    def counts_at(self, now: float) -> bool:
        """Whether the finding proves its signer at `now` (valid and not yet expired)."""
        return self.valid and (self.valid_until is None or now < self.valid_until)

    def describe(self) -> str:
        """How a denial shows this finding: `by release`, `by an unknown key (sha256:…)`."""
        if self.valid and self.signer is not None:
            return f"by {self.signer}"
        return self.detail or f"invalid ({short(self.signature_digest)})"


def unknown(signature_digest: str, kind: str, what: str = "key") -> Finding:
    """A signature no trusted signer made (or whose bytes were altered: the two look alike)."""
    return Finding(
        signature_digest, kind, False, None, f"by an unknown {what} ({short(signature_digest)})"
    )


def invalid(signature_digest: str, kind: str, why: str) -> Finding:
    """A signature that cannot count, with why (`for another image (sha256:…)`)."""
    return Finding(signature_digest, kind, False, None, why)


def not_after(certificates: Iterable[object]) -> float | None:
    """The first instant (Unix seconds) at which one of these certificates is no longer valid,
    None for none. X.509 validity includes its `notAfter` second (RFC 5280 4.1.2.5, "through
    notAfter, inclusive"), as the chain verifier reads it: the certificate ends one second
    after `notAfter`, the same half-open end as every other `valid_until`."""
    ends = [
        c.not_valid_after_utc.timestamp() + 1
        for c in certificates
        if isinstance(getattr(c, "not_valid_after_utc", None), datetime.datetime)
    ]
    return min(ends) if ends else None
