"""The filesystem store's gathered append (one `writev` for a batch of chunks, as the proxy
writes what it receives): every byte lands in order, across more chunks than one `writev`
takes and with empty chunks among them."""

from __future__ import annotations

import os
from pathlib import Path

from storage.filesystem import FilesystemBlobStore
from storage.layout import DataLayout


async def test_gathered_chunks_are_appended_in_order(tmp_path: Path):
    store = FilesystemBlobStore(DataLayout(tmp_path / "data"), fsync=False)
    try:
        await store.start_upload("u1")
        await store.append("u1", b"head:")
        chunks = [os.urandom(n % 97) for n in range(2500)]  # > 1024 buffers, some empty
        await store.append_chunks("u1", chunks)
        await store.append_chunks("u1", [b":tail"])
        expected = b"head:" + b"".join(chunks) + b":tail"
        assert store.upload_file("u1").read_bytes() == expected
        assert await store.upload_size("u1") == len(expected)
    finally:
        await store.close()
