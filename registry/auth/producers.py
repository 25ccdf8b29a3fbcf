"""Who may read a quarantined image of a repository: one question for every handler that serves
quarantined content (manifests here; blobs ask it too), answered from the policy's
`quarantine.readable_by` and the registry's permissions."""

from __future__ import annotations

from aiohttp import web

from registry.auth.service import AUTH
from registry.context import CONTEXT
from registry.identity import identity


def quarantine_reader(request: web.Request, repository: str) -> str | None:
    """Why the caller of `request` may read quarantined images of `repository` (the reason the
    decision log records, e.g. "quarantined; read by a producer of prod/app"), or None when the
    pull rules alone decide.

    A producer is a caller the permissions allow to push to the repository, whatever the scope of
    the token it holds (signers such as cosign read with a pull-only token before they push).
    In the base-image library's namespace only ops (admin there) push, so only they produce.
    Without authentication nobody is a producer: every caller is the same anonymous one.
    """
    context = request.app.get(CONTEXT)
    if context is None:
        return None
    policy = context.policy.policy
    who = identity(request)
    service = request.app.get(AUTH)
    may_push = False
    if service is not None:
        needed = "push"
        if policy.library is not None and policy.library.in_namespace(repository):
            needed = "admin"
        may_push = service.permissions.allows(who, repository, needed)
    return policy.quarantine.reader(repository, who.name, who.groups, may_push=may_push)
