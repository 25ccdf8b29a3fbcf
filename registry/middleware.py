"""Cross-cutting request handling: error bodies and the API version header."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import ClientPayloadError, web

from registry.errors import BLOB_UPLOAD_INVALID, ErrorCode, RegistryError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNKNOWN = ErrorCode("UNKNOWN", 500, "unknown error")

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the spec's error body; never let a traceback reach a client."""
    try:
        response = await handler(request)
    except RegistryError as exc:
        response = exc.response()
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except (ClientPayloadError, ConnectionResetError) as exc:
        # The client went away or sent a truncated body; what was stored so far is kept.
        log.info("%s %s: request body interrupted: %s", request.method, request.path, exc)
        response = RegistryError(
            BLOB_UPLOAD_INVALID, {"reason": "request body interrupted"}
        ).response()
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        response = RegistryError(UNKNOWN).response()
    response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
    return response
