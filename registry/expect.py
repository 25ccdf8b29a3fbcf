"""How every route answers a request's `Expect` header (RFC 9110 10.1.1).

aiohttp answers `Expect` before any middleware runs, through the expect handler of the route
that matched, given when the route is added (`expect_handler=`): every route of the registry is
added with `expect_continue`.
"""

from __future__ import annotations

from aiohttp import HttpVersion11, hdrs, web


async def expect_continue(request: web.Request) -> None:
    """`Expect: 100-continue` on HTTP/1.1 gets the interim `100 Continue`, as aiohttp's own
    handler sends it; any other expectation is ignored (RFC 9110 allows it) instead of refused
    outside the error middleware (a 417 without the spec's body, or a 500 for bytes that are not
    UTF-8)."""
    if request.version != HttpVersion11:
        return
    if request.headers.get(hdrs.EXPECT, "").strip().lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # The interim answer is not the response: the response's size counts from here.
        request.writer.output_size = 0
