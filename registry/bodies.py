"""Reading an HTTP body whole into memory, never past a limit: a request's (a manifest, a scan
report) or an upstream's answer (a manifest, a token, a tag page)."""

from __future__ import annotations

from aiohttp import StreamReader


class BodyTooLarge(Exception):
    """The body ran past the reader's limit; `size` is how much had arrived (more than it)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"more than {size - 1} bytes")
        self.size = size


async def read_bounded(stream: StreamReader, limit: int) -> bytes:
    """The whole of `stream`, however many pieces it arrives in; `BodyTooLarge` as soon as it
    passes `limit` bytes (nothing more is read)."""
    body = bytearray()
    while piece := await stream.readany():
        body += piece
        if len(body) > limit:
            raise BodyTooLarge(len(body))
    return bytes(body)
