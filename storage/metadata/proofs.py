"""Signature proofs: what an image's signatures were verified to prove, under which trust
config, so a pull needs no cryptography while nothing changed.

Rows: `signature_proofs` (see `storage.layout`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple


class ProofRow(NamedTuple):
    """One recorded proof of an image (an empty `signature_digest` marks "none found")."""

    signature_digest: str
    signer: str | None
    valid: bool
    detail: dict[str, Any]  # kind, reason, references, validity, where the signatures were
    trust_version: str
    verified_at: float


class SignatureProofs(ABC):
    """The recorded proofs of each image."""

    @abstractmethod
    async def replace_signature_proofs(
        self, repository: str, image_digest: str, proofs: Sequence[ProofRow]
    ) -> None:
        """Replace every recorded proof of `repository@image_digest` by `proofs`, in one
        transaction."""

    @abstractmethod
    async def signature_proofs(self, repository: str, image_digest: str) -> list[ProofRow]:
        """The recorded proofs of an image, under whichever trust config, in the order they
        were recorded."""
