"""Cross-cutting request handling: error bodies and the API version header."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import ClientPayloadError, web

from registry.errors import ANSWERABLE, RegistryError, error_response
from storage.oci.errors import BLOB_UPLOAD_INVALID, QUERY_INVALID, UNKNOWN, OciError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")


class InFlight:
    """Counts requests being handled, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in progress (at most `timeout` seconds)."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


IN_FLIGHT = web.AppKey("in_flight", InFlight)


@web.middleware
async def in_flight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request as in flight while its handler runs."""
    with request.app[IN_FLIGHT]:
        return await handler(request)


@web.middleware
async def query_text_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a NUL in any query value of Trustyard's own API and console (QUERY_INVALID): no
    name, tag or field holds one, and every backend then answers alike (the OCI API under
    `/v2/` reads each of its parameters by the spec's grammar instead)."""
    if not request.path.startswith("/v2"):
        for name, value in request.query.items():
            if "\x00" in value:
                raise RegistryError(
                    QUERY_INVALID,
                    {name: value[:100].replace("\x00", "\\0"), "reason": "NUL character"},
                    message=f"{name}: no NUL character allowed",
                )
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the spec's error body; never let a traceback reach a client."""
    try:
        response = await handler(request)
    except ANSWERABLE as exc:  # the spec's codes, and what storage and the policy refuse with
        response = error_response(exc)
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except (ClientPayloadError, ConnectionResetError) as exc:
        # The client went away or sent a truncated body; the upload was cut back to where the
        # request found it (its last acknowledged offset), which the status GET reports.
        log.info("%s %s: request body interrupted: %s", request.method, request.path, exc)
        response = error_response(
            OciError(BLOB_UPLOAD_INVALID, {"reason": "request body interrupted"})
        )
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        response = error_response(OciError(UNKNOWN))
    response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
    return response
