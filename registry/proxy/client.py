"""Speaking to one upstream registry: TLS, timeouts, and its authentication.

Anonymous, Basic and the Docker token flow (spec: distribution "Token Authentication"): a `401`
with `WWW-Authenticate: Bearer realm=...,service=...` sends us to the realm for a token scoped to
`repository:<name>:pull` (with Basic credentials when configured); tokens are cached per scope
until they expire, and the challenge is remembered so that later requests go to the realm first
instead of costing a `401` each. Challenges are parsed with the standard library's RFC 7235
list parser, never by hand.

An upstream that answers `429 Too Many Requests` is left alone for as long as its `Retry-After`
says (seconds or an HTTP date, bounded to `MIN_BACKOFF`..`MAX_BACKOFF`; without one, a pause
that doubles with each 429 in a row): meanwhile no request is sent to it at all and every
caller gets `RateLimited` at once, so the caches serve what they hold (stale within its window)
instead of hammering an upstream that asked for a pause.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit
from urllib.request import parse_http_list, parse_keqv_list

import aiohttp

from registry.bodies import BodyTooLarge, read_bounded
from registry.proxy.connect_deadline import ConnectDeadline, connect_tracing
from registry.upstream_settings import Upstream

log = logging.getLogger("trustyard.proxy")

#: A token is used no later than this many seconds before it expires (clock skew, slow links).
TOKEN_MARGIN = 10.0
#: `expires_in` when the token server gives none (the spec's default).
DEFAULT_TOKEN_LIFETIME = 60.0
#: Largest token response read.
MAX_TOKEN_RESPONSE = 1 << 20
#: Bounds of a pause after a 429: at least this long (an upstream answering `Retry-After: 0`
#: is not hammered), and at most this long (a hostile or broken `Retry-After` cannot take an
#: upstream away for days).
MIN_BACKOFF = 1.0
MAX_BACKOFF = 300.0


class UpstreamError(Exception):
    """The upstream could not answer: unreachable, too slow, or an error status."""

    def __init__(self, upstream: Upstream, reason: str) -> None:
        super().__init__(f"upstream {upstream.name} ({upstream.url}): {reason}")
        self.upstream = upstream
        self.reason = reason


class RateLimited(UpstreamError):
    """The upstream answered 429, or did recently: nothing is sent to it for `retry_after`
    more seconds."""

    def __init__(self, upstream: Upstream, retry_after: float) -> None:
        super().__init__(
            upstream, f"rate limited (429): backing off, retry in {max(int(retry_after), 1)}s"
        )
        self.retry_after = retry_after


def retry_after_seconds(header: str | None, now: float) -> float | None:
    """The pause a `Retry-After` value asks for (RFC 9110: delay-seconds or an HTTP date),
    or None when there is none or it cannot be read."""
    if not header:
        return None
    value = header.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is not one
        return None
    return when.timestamp() - now


@dataclass(frozen=True)
class Challenge:
    """What the upstream asked for in `WWW-Authenticate`."""

    scheme: str  # "basic" | "bearer"
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a `WWW-Authenticate` header, or None when it is not one we speak."""
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("basic", "bearer"):
        return None
    try:
        params = parse_keqv_list(parse_http_list(rest)) if rest.strip() else {}
    except ValueError:
        return None
    return Challenge(scheme, {k.lower(): v for k, v in params.items()})


class UpstreamClient:
    """One upstream's HTTP client (connection pool, TLS context, credentials, tokens)."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._session: aiohttp.ClientSession | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._token_locks: dict[str, asyncio.Lock] = {}
        #: Requests sent upstream, for /metrics.
        self.requests = 0
        #: 429 answers received, and requests not sent because of the pause they asked for.
        self.rate_limited = 0
        self.held_back = 0
        #: Connect deadlines passed while this process was held up, and given back.
        self.connects_waited_out = 0
        #: No request is sent before this time (after a 429); 429s in a row without a
        #: `Retry-After`, for the doubling pause.
        self.backoff_until = 0.0
        self._strikes = 0

    def session(self) -> aiohttp.ClientSession:
        """The connection pool, opened on first use (inside the running event loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.upstream.ssl_context() or True, limit=64)
            # The connect bound is each request's `ConnectDeadline`, not aiohttp's timer: a
            # pause of this process must not count as the upstream's silence.
            timeout = aiohttp.ClientTimeout(sock_read=self.upstream.read_timeout)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=False,
                trace_configs=[connect_tracing()],
            )
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()

    def backoff_left(self) -> float:
        """Seconds before the upstream may be asked again (0 when it may be now)."""
        return max(self.backoff_until - time.time(), 0.0)

    def _hold_back(self) -> None:
        """RateLimited, without a request, while the upstream's pause lasts."""
        left = self.backoff_left()
        if left > 0:
            self.held_back += 1
            raise RateLimited(self.upstream, left)

    def _too_many(self, header: str | None) -> RateLimited:
        """Note a 429: the pause starts now (the later end wins when several overlap)."""
        now = time.time()
        self.rate_limited += 1
        if self.backoff_until <= now:
            # A 429 after the last pause ended doubles the next; those of requests sent
            # together (answered while the pause is on) are one.
            self._strikes += 1
        asked = retry_after_seconds(header, now)
        if asked is None:
            asked = MIN_BACKOFF * 2 ** min(max(self._strikes - 1, 0), 16)
        pause = min(max(asked, MIN_BACKOFF), MAX_BACKOFF)
        self.backoff_until = max(self.backoff_until, now + pause)
        log.warning(
            "upstream %s answered 429 (Retry-After: %s): nothing is sent to it for %.0fs",
            self.upstream.name,
            header or "none",
            self.backoff_until - now,
        )
        return RateLimited(self.upstream, self.backoff_until - now)

    def _basic(self) -> str | None:
        """The `Authorization: Basic` value of the configured credentials, if any."""
        up = self.upstream
        if up.username is None or up.password is None:
            return None
        return "Basic " + base64.b64encode(f"{up.username}:{up.password}".encode()).decode()

    @contextlib.asynccontextmanager
    async def _bounded(self, deadline: ConnectDeadline) -> AsyncIterator[None]:
        """Run a request inside its connect `deadline` (the times it gave back counted in
        `connects_waited_out`)."""
        try:
            async with deadline.bounding():
                yield
        finally:
            self.connects_waited_out += deadline.waited_out

    def _describe(self, exc: BaseException, deadline: ConnectDeadline) -> str:
        """A failure to reach the upstream in words."""
        if deadline.expired:
            return f"connect timed out (no connection within {self.upstream.connect_timeout:g}s)"
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return "timed out"
        return f"unreachable ({type(exc).__name__}: {exc})"[:300]

    async def request(
        self, method: str, repository: str, path: str, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """Send `method /v2/<repository>/<path>` upstream, authenticating as it asks; the
        caller releases the response. UpstreamError when the upstream cannot be reached, is
        too slow, refuses our credentials or answers a server error."""
        url = f"{self.upstream.url}/v2/{repository}/{path}"
        scope = f"repository:{repository}:pull"
        for attempt in range(2):
            self._hold_back()
            sent = dict(headers or {})
            auth = await self._authorization(scope)
            if auth is not None:
                sent["Authorization"] = auth
            deadline = ConnectDeadline(self.upstream.connect_timeout)
            try:
                self.requests += 1
                async with self._bounded(deadline):
                    response = await self.session().request(
                        method, url, headers=sent, trace_request_ctx=deadline
                    )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise UpstreamError(self.upstream, self._describe(exc, deadline)) from None
            if response.status == 401 and attempt == 0:
                challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
                response.release()
                if challenge is None:
                    raise UpstreamError(self.upstream, "401 without a challenge we can answer")
                self._challenge = challenge
                self._tokens.pop(scope, None)
                continue
            if response.status == 401:
                response.release()
                if self._basic() is None:
                    raise UpstreamError(
                        self.upstream, "401: the upstream wants credentials and none are configured"
                    )
                raise UpstreamError(self.upstream, "401: the upstream refuses our credentials")
            if response.status == 429:
                response.release()
                raise self._too_many(response.headers.get("Retry-After"))
            self._strikes = 0
            if response.status >= 500:
                response.release()
                raise UpstreamError(self.upstream, f"answered {response.status}")
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _authorization(self, scope: str) -> str | None:
        """The `Authorization` header for `scope` under the last challenge seen, if any."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self._basic()
        cached = self._tokens.get(scope)
        if cached is not None and cached[1] > time.time():
            return f"Bearer {cached[0]}"
        lock = self._token_locks.setdefault(scope, asyncio.Lock())
        async with lock:  # many pulls of one image ask the realm once
            cached = self._tokens.get(scope)
            if cached is not None and cached[1] > time.time():
                return f"Bearer {cached[0]}"
            token, expires = await self._fetch_token(challenge, scope)
            self._tokens[scope] = (token, expires)
            return f"Bearer {token}"

    async def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[str, float]:
        realm = challenge.params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise UpstreamError(self.upstream, "Bearer challenge without an http(s) realm")
        query = {"scope": scope}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}"
        deadline = ConnectDeadline(self.upstream.connect_timeout)
        try:
            basic = self._basic()
            # The upstream names the realm: our password goes there only over TLS, or to the
            # upstream's own host (never in clear text to a host it merely names).
            realm_url = urlsplit(realm)
            safe = realm_url.scheme == "https" or realm_url.netloc == self.upstream.host
            headers = {"Authorization": basic} if basic and safe else {}
            self._hold_back()
            async with (
                self._bounded(deadline),
                self.session().get(url, headers=headers, trace_request_ctx=deadline) as response,
            ):
                if response.status == 429:
                    raise self._too_many(response.headers.get("Retry-After"))
                if response.status != 200:
                    raise UpstreamError(
                        self.upstream, f"token endpoint {realm} answered {response.status}"
                    )
                body = await read_bounded(response.content, MAX_TOKEN_RESPONSE)
        except BodyTooLarge:
            raise UpstreamError(self.upstream, "token endpoint answered too large a body") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = self._describe(exc, deadline)
            raise UpstreamError(self.upstream, f"token endpoint: {reason}") from None
        try:
            document = _json_object(body)
            token = document.get("token") or document.get("access_token")
            lifetime = float(document.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, TypeError):
            raise UpstreamError(self.upstream, "token endpoint answered no JSON token") from None
        if not isinstance(token, str) or not token:
            raise UpstreamError(self.upstream, "token endpoint answered no token")
        return token, time.time() + max(lifetime - TOKEN_MARGIN, 0.0)


def _json_object(body: bytes) -> dict[str, object]:
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("not an object")
    return document
