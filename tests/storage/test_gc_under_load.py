"""A collection shares the metadata database's write lock: while it deletes thousands of
manifests, the server's writes are served between its transactions, never fail with "database
is locked", and never wait for the whole collection.

Shown by order, not by wall time (a loaded 2-core runner stalls a single push for seconds
without the collection being at fault): a push that starts after the collection's first deleting
transaction committed and ends before its last one did. A collection that held the lock from its
first deletion to its last (one transaction, or no pause between them) moves the number of
manifests left from all to none at once: no push can fit between."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from typing import Any

from registry.context import CONTEXT
from storage.layout import DataLayout
from storage.metadata import ManifestRecord, open_metadata
from storage.oci.manifest import Reference
from tests.conftest import registry_metadata_url
from tests.oci import OCI_MANIFEST, push_blob
from tests.storage.gc_helpers import image, put_manifest

#: Untagged manifests the collection deletes while the server takes writes.
MANIFESTS = 1500

#: Clients writing at once while it runs (server writes queue behind one another).
WRITERS = 8


async def test_server_writes_stay_fast_while_gc_deletes_thousands(client, data_dir):
    base = await image(client, "app", "base")
    assert (await put_manifest(client, "app", base, reference="v1"))[0] == 201
    references = [Reference(base["config"]["digest"], "blob")] + [
        Reference(layer["digest"], "blob") for layer in base["layers"]
    ]
    # Thousands of untagged manifests, recorded through the storage API (pushing them one by
    # one over HTTP would take most of the test's time).
    db = await open_metadata(DataLayout(data_dir).database, registry_metadata_url())
    try:
        for number in range(MANIFESTS):
            body = json.dumps({**base, "annotations": {"n": str(number)}}).encode()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            record = ManifestRecord("app", digest, OCI_MANIFEST, body)
            await db.put_manifest(record, references, None)
    finally:
        await db.close()

    # Files, not pipes: the collection logs a line per removal, more than a pipe buffers.
    out_path, err_path = data_dir.parent / "gc.out", data_dir.parent / "gc.err"
    with out_path.open("wb") as out_file, err_path.open("wb") as err_file:
        gc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry",
                "gc",
                "--data-dir",
                str(data_dir),
                "--grace-period",
                "0s",
            ],
            stdout=out_file,
            stderr=err_file,
        )
    latencies: list[float] = []
    statuses: list[int] = []
    #: For each push: how many of the untagged manifests were left just before it started and
    #: just after it was answered (committed state, read beside the writes).
    spans: list[tuple[int, int]] = []
    body = json.dumps(base).encode()
    server_db = client.server.app[CONTEXT].db

    async def left() -> int:
        rows: list[Any] = await server_db.read(
            "SELECT COUNT(*) FROM manifests WHERE repository = 'app'"
        )
        return int(rows[0][0]) - 1  # the tagged base stays

    async def writer(name: str) -> None:
        # Tag pushes and blob uploads, one after another, until the collection ends.
        number = 0
        while gc.poll() is None:
            number += 1
            before = await left()
            began = time.monotonic()
            resp = await client.put(
                f"/v2/app/manifests/{name}-{number}",
                data=body,
                headers={"Content-Type": OCI_MANIFEST},
            )
            await resp.read()
            statuses.append(resp.status)
            await push_blob(client, "app", f"blob {name} {number}".encode())
            latencies.append(time.monotonic() - began)
            spans.append((before, await left()))
            await asyncio.sleep(0.01)

    await asyncio.gather(*(writer(f"w{n}") for n in range(WRITERS)))
    assert gc.wait() == 0, err_path.read_text()[-2000:]
    removed = [line for line in out_path.read_text().splitlines() if "removed manifest" in line]
    assert len(removed) == MANIFESTS
    assert await left() == 0
    assert set(statuses) == {201}
    # Pushes served inside the collection: begun once some manifests were deleted, answered
    # while some were still there.
    inside = [(b, a) for b, a in spans if b < MANIFESTS and a > 0]
    latencies.sort()
    print(
        f"{len(latencies)} pushes ({len(inside)} between the collection's transactions), "
        f"median {latencies[len(latencies) // 2]:.3f}s, max {latencies[-1]:.3f}s"
    )
    assert inside, f"no push was served between the collection's transactions: {spans}"
