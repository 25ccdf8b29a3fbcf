"""Bearer tokens this process has verified, remembered until they expire.

A client sends the same token with every request of a push or a pull (docker keeps it for its
whole lifetime), and checking its ES256 signature is most of what authentication costs. So a token
that passed `TokenAuthority.verify` is remembered here and the next request that carries exactly
the same bytes is not verified again:

- the key is the SHA-256 of the whole token (header, claims and signature): a token that differs
  in one byte is another key, and goes through full verification. The token itself is not kept,
  so a memory dump names no live token. A push token (one scope per repository) is a few KiB:
  it is hashed holding the GIL (`shared.hashing`);
- an entry answers only inside the window the verification itself accepted: from `nbf`/`iat`
  minus the clock skew until `exp` plus the clock skew, the same bounds PyJWT applies. Once
  that window closes the entry is dropped and the token is verified again (and refused);
- what it holds is the token's claims only: who the subject is and what the token grants. Who
  that subject is *now* (removed, demoted, a deleted robot) is asked of the users file on every
  request (`AuthService.bearer`), never remembered here;
- only tokens that verified are kept (an invalid token costs a full check each time, as before);
- at most `max_entries` are kept, least recently used first out, so a flood of distinct valid
  tokens (anyone may fetch anonymous ones) costs bounded memory and at worst a verification each.

Issuer, audience and key are the authority's own and fixed for its lifetime: each
`TokenAuthority` has its own cache, so a token verified for one service is never an entry of
another's.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.hashing import hashed

#: Tokens remembered at most (each entry is a few hundred bytes: about 2 MB at the bound).
MAX_TOKENS = 8192

Claims = TypeVar("Claims")


@dataclass(frozen=True)
class _Entry(Generic[Claims]):
    claims: Claims
    valid_from: float
    valid_until: float


class VerifiedTokens(Generic[Claims]):
    """Verified tokens' claims by the SHA-256 of the token, each until its expiry."""

    def __init__(self, max_entries: int = MAX_TOKENS) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, _Entry[Claims]] = OrderedDict()
        #: Lookups answered from the cache (for tests and metrics: proof the cache was used).
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> Claims | None:
        """The claims of `token` when it was verified and `now` is inside its window."""
        key = _key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry.valid_from <= now < entry.valid_until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.claims

    def put(self, token: str, claims: Claims, *, valid_from: float, valid_until: float) -> None:
        """Remember a token that just verified, valid for `valid_from <= now < valid_until`."""
        key = _key(token)
        self._entries[key] = _Entry(claims, valid_from, valid_until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every token (each is verified again on its next use)."""
        self._entries.clear()


def _key(token: str) -> bytes:
    # surrogatepass: a header that is not valid UTF-8 still gets a key (and then fails verify).
    return hashed("sha256", token.encode("utf-8", "surrogatepass")).digest()
