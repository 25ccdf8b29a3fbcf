"""What the policy floor refuses with, in its own words: no HTTP status, no spec error body.

`registry.errors` answers a `PolicyDenied` as the spec's DENIED (403) with the policy's reason
as the message the client shows.
"""

from __future__ import annotations

from typing import Any


class PolicyDenied(Exception):
    """The policy refuses the request; `message` says why in words a developer understands."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
