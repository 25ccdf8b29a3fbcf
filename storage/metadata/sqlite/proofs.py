"""Signature proofs in SQLite (`storage.metadata.proofs`)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from storage.metadata.proofs import ProofRow
from storage.metadata.sqlite.connection import SQLiteBase


class SQLiteProofs(SQLiteBase):
    """`SignatureProofs` on SQLite."""

    async def replace_signature_proofs(
        self, repository: str, image_digest: str, proofs: Sequence[ProofRow]
    ) -> None:
        """Replace every recorded proof of `repository@image_digest`, in one transaction."""
        async with self.transaction() as conn:
            await conn.execute(
                "DELETE FROM signature_proofs WHERE repository = ? AND image_digest = ?",
                (repository, image_digest),
            )
            await conn.executemany(
                "INSERT INTO signature_proofs (repository, image_digest, signature_digest, "
                "signer, valid, detail, trust_version, verified_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        repository,
                        image_digest,
                        p.signature_digest,
                        p.signer,
                        int(p.valid),
                        json.dumps(p.detail),
                        p.trust_version,
                        p.verified_at,
                    )
                    for p in proofs
                ],
            )

    async def signature_proofs(self, repository: str, image_digest: str) -> list[ProofRow]:
        """The recorded proofs of an image, in the order they were recorded."""
        rows = await self._all(
            "SELECT signature_digest, signer, valid, detail, trust_version, verified_at "
            "FROM signature_proofs WHERE repository = ? AND image_digest = ? "
            "ORDER BY rowid",
            (repository, image_digest),
        )
        return [ProofRow(r[0], r[1], bool(r[2]), json.loads(r[3]), r[4], float(r[5])) for r in rows]
