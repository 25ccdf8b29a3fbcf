"""The file a proxied fetch grows while clients follow it (`storage.growing`): gathered appends
land in order (more buffers than one `writev` takes, empty ones among them), a reader's own
descriptor sees each append at once and keeps reading after the writer closed, and the unnamed
copy leaves no name behind."""

from __future__ import annotations

import os
from pathlib import Path

from storage.growing import GrowingFile


def test_gathered_chunks_are_appended_in_order_and_followed(tmp_path: Path):
    path = tmp_path / "upload"
    path.write_bytes(b"head:")
    file = GrowingFile.append_to(path)
    reader = file.reader()
    try:
        chunks = [os.urandom(n % 97) for n in range(2500)]  # > 1024 buffers, some empty
        file.append(chunks)
        body = b"head:" + b"".join(chunks)
        assert os.pread(reader, len(body) + 10, 0) == body  # seen at once, nothing more
        file.append([b":tail"])
        file.close()
        assert os.pread(reader, 100, len(body)) == b":tail"
        assert path.read_bytes() == body + b":tail"
    finally:
        os.close(reader)


def test_the_unnamed_copy_leaves_no_name_and_outlives_its_writer_for_a_reader(tmp_path: Path):
    folder = tmp_path / "uploads"
    file = GrowingFile.unnamed(folder)
    file.append([b"received ", b"so far"])
    reader = file.reader()
    try:
        assert list(folder.iterdir()) == []
        file.close()
        assert os.pread(reader, 100, 0) == b"received so far"
    finally:
        os.close(reader)
    assert list(folder.iterdir()) == []
