"""The OpenAPI 3.1 description of Trustyard's management API (`/api/v1/...`), served at
`GET /api/v1/openapi.json` and published as `docs/openapi.json`.

`tests/console/test_openapi.py` keeps it equal to the implementation (every `/api/v1` route of
the application is described here and nothing else is), checks the published copy, and fuzzes
every operation from this document. Regenerate the published copy with
`python -m registry.handlers.openapi > docs/openapi.json`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object schema: `required` properties must be present; more may follow (additive API)."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
NSTR = {"type": ["string", "null"]}
TIME = {"type": ["string", "null"], "description": "UTC, ISO 8601"}
DIGEST = {"type": "string", "description": "algorithm:hex"}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {
            "errors": _array(
                _obj({"code": STR, "message": STR}, {"detail": {}}),
            )
        }
    ),
    "Decision": _obj(
        {
            "id": INT,
            "time": NUM,
            "last_time": NUM,
            "repeats": INT,
            "identity": STR,
            "action": {"enum": ["push", "pull", "delete"]},
            "repository": STR,
            "reference": STR,
            "digest": STR,
            "outcome": {"enum": ["allow", "deny", "warn"]},
            "rule": NSTR,
            "reason": STR,
            "policy_version": STR,
        }
    ),
    "RuleVerdict": _obj({"rule": STR, "mode": STR, "outcome": STR, "reason": STR}),
    "Signature": _obj(
        {
            "signature_digest": STR,
            "kind": STR,
            "signer": NSTR,
            "verified": BOOL,
            "reason": STR,
            "current_trust": BOOL,
            "verified_at": TIME,
        },
        {"docker_reference": NSTR, "predicate_type": NSTR},
    ),
    "ScanReport": _obj(
        {
            "digest": STR,
            "scanner": STR,
            "tool": STR,
            "tool_version": STR,
            "format": STR,
            "scanned_at": STR,
            "received_at": STR,
            "summary": {"type": "object"},
        },
        {
            "findings": _array(
                _obj(
                    {"id": STR, "severity": STR, "package": STR, "installed": STR, "fixed": NSTR},
                    {
                        "exception": {
                            "oneOf": [
                                {"type": "null"},
                                _obj({"rule": STR, "until": STR, "reason": STR}),
                            ]
                        }
                    },
                )
            ),
            "findings_truncated": BOOL,
        },
    ),
    "LibraryConsumer": _obj(
        {
            "repository": STR,
            "tag": STR,
            "digest": STR,
            "library_name": STR,
            "library_tag": STR,
            "base_digest": STR,
            "base": STR,
            "current": BOOL,
            "current_digest": NSTR,
            "replaced_at": {"type": ["number", "null"]},
            "behind_seconds": INT,
            "platforms": _array(STR),
        }
    ),
}

_PAGE_N = {
    "name": "n",
    "in": "query",
    "required": False,
    "description": "rows per page",
    "schema": {"type": "string"},
}
_LAST = {
    "name": "last",
    "in": "query",
    "required": False,
    "description": "where the previous page ended (from `next`)",
    "schema": STR,
}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or STR,
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": STR}


def _get(
    summary: str,
    body: dict[str, Any],
    parameters: list[dict[str, Any]] | None = None,
    *,
    content_type: str = JSON,
    extra_content: dict[str, Any] | None = None,
) -> dict[str, Any]:
    content = {content_type: {"schema": body}, **(extra_content or {})}
    return {
        "get": {
            "summary": summary,
            "parameters": parameters or [],
            "responses": {
                "200": {"description": "OK", "content": content},
                "default": {
                    "description": "an error, with the spec's error body",
                    "content": {JSON: {"schema": _ref("Error")}},
                },
            },
        }
    }


_NEXT = {"next": {"type": "string", "description": "the URL of the next page"}}

PATHS: dict[str, Any] = {
    "/api/v1/openapi.json": _get("This document", {"type": "object"}),
    "/api/v1/health": _get(
        "Policy in force, event backlog per endpoint, storage backend, last garbage collection",
        _obj(
            {
                "version": STR,
                "started_at": STR,
                "policy": _obj(
                    {
                        "version": STR,
                        "file": NSTR,
                        "allows_everything": BOOL,
                        "mode": STR,
                        "text": NSTR,
                        "rules": _array(_obj({"name": STR, "line": INT, "mode": STR})),
                    }
                ),
                "events": _obj(
                    {
                        "pending": INT,
                        "failed": INT,
                        "endpoints": _array(
                            _obj(
                                {
                                    "name": STR,
                                    "pending": INT,
                                    "failed": INT,
                                    "oldest": TIME,
                                    "last_error": NSTR,
                                }
                            )
                        ),
                    }
                ),
                "storage": _obj({"backend": STR, "delete_enabled": BOOL}),
                "gc": {
                    "oneOf": [
                        {"type": "null"},
                        _obj(
                            {"started_at": STR, "finished_at": STR, "removed": {"type": "object"}}
                        ),
                    ]
                },
            }
        ),
    ),
    "/api/v1/decisions": _get(
        "The decision log, newest first, filtered and paged",
        _obj({"policy_version": STR, "decisions": _array(_ref("Decision"))}, _NEXT),
        [
            _query("repository", "exact repository name"),
            _query("outcome", "allow | deny | warn"),
            _query("action", "push | pull | delete"),
            _query("rule", "the rule that decided"),
            _query("identity", "who asked"),
            _query("since", "epoch seconds, ISO 8601, or a duration ago (15m, 2h)"),
            _query("until", "epoch seconds, ISO 8601, or a duration ago"),
            _PAGE_N,
            _query("last", "the decision id the previous page ended at"),
        ],
    ),
    "/api/v1/decisions/summary": _get(
        "Allowed, warned and denied decisions per time bucket",
        _obj(
            {
                "since": NUM,
                "until": NUM,
                "bucket_seconds": NUM,
                "totals": _obj({"allow": INT, "warn": INT, "deny": INT}),
                "buckets": _array(_obj({"start": NUM, "allow": INT, "warn": INT, "deny": INT})),
            }
        ),
        [
            _query("since", "default 24h"),
            _query("buckets", "1 to 200, default 24"),
            _query("repository", "exact repository name"),
        ],
    ),
    "/api/v1/images/{repository}/{reference}/status": _get(
        "Whether a stored image is pullable or quarantined, and every matching rule's verdict",
        _obj(
            {
                "repository": STR,
                "reference": STR,
                "digest": STR,
                "media_type": STR,
                "tags": _array(STR),
                "status": {"enum": ["pullable", "pullable-with-warnings", "quarantined"]},
                "policy_version": STR,
                "no_policy": BOOL,
                "evidence_version": INT,
                "rules": _array(_ref("RuleVerdict")),
                "unmet": _array(STR),
            }
        ),
        [_path("repository", "repository name"), _path("reference", "tag or digest")],
    ),
    "/api/v1/quarantine": _get(
        "Tagged images stored but not pullable, with the unmet requirements",
        _obj(
            {
                "policy_version": STR,
                "checked": INT,
                "images": _array(
                    _obj(
                        {
                            "repository": STR,
                            "tag": STR,
                            "digest": STR,
                            "unmet": _array(
                                _obj(
                                    {
                                        "rule": STR,
                                        "line": INT,
                                        "message": STR,
                                        "requirements": _array(STR),
                                        "release": _array(STR),
                                    }
                                )
                            ),
                        }
                    )
                ),
            },
            _NEXT,
        ),
        [_PAGE_N, _query("last", "repository:tag the previous page ended at")],
    ),
    "/api/v1/repositories": _get(
        "Repositories in lexical order, with tag and manifest counts",
        _obj(
            {
                "repositories": _array(
                    _obj({"name": STR, "tags": INT, "manifests": INT, "updated_at": TIME})
                )
            },
            _NEXT,
        ),
        [_query("prefix", "names starting with this"), _PAGE_N, _LAST],
    ),
    "/api/v1/repositories/{repository}/tags": _get(
        "A repository's tags with what each points at",
        _obj(
            {
                "repository": STR,
                "tags": _array(
                    _obj(
                        {
                            "name": STR,
                            "digest": STR,
                            "media_type": STR,
                            "size": INT,
                            "updated_at": TIME,
                        }
                    )
                ),
            },
            _NEXT,
        ),
        [_path("repository", "repository name"), _PAGE_N, _LAST],
    ),
    "/api/v1/repositories/{repository}/manifests/{reference}": _get(
        "One manifest with its platforms, size, signatures, attestations, scans, referrers and "
        "lineage",
        _obj(
            {
                "repository": STR,
                "reference": STR,
                "digest": DIGEST,
                "media_type": STR,
                "artifact_type": NSTR,
                "kind": {"enum": ["image", "index", "artifact"]},
                "subject": NSTR,
                "annotations": {"type": "object"},
                "created_at": TIME,
                "manifest_size": INT,
                "size": INT,
                "tags": _array(STR),
                "platforms": _array(
                    _obj(
                        {
                            "platform": STR,
                            "digest": STR,
                            "media_type": STR,
                            "stored": BOOL,
                            "size": INT,
                            "layers": INT,
                        }
                    )
                ),
                "layers": _array(
                    _obj(
                        {
                            "role": {"enum": ["config", "layer"]},
                            "digest": STR,
                            "media_type": STR,
                            "size": INT,
                            "stored": BOOL,
                        }
                    )
                ),
                "signatures": _array(_ref("Signature")),
                "attestations": _array(_ref("Signature")),
                "scans": _array(_ref("ScanReport")),
                "referrers": _array(
                    _obj(
                        {
                            "digest": STR,
                            "media_type": STR,
                            "artifact_type": NSTR,
                            "size": INT,
                            "annotations": {"type": "object"},
                        }
                    )
                ),
                "lineage": _array(
                    _obj(
                        {
                            "platform": STR,
                            "library": STR,
                            "base_digest": STR,
                            "current": BOOL,
                            "shared_layers": INT,
                            "recorded_at": TIME,
                        }
                    )
                ),
            }
        ),
        [_path("repository", "repository name"), _path("reference", "tag or digest")],
    ),
    "/api/v1/library": _get(
        "The base-image library: declared images and tags, current digests, history, consumers",
        _obj({"namespace": NSTR, "images": _array({"type": "object"})}),
    ),
    "/api/v1/library/stale": _get(
        "The rebuild list: images built on a replaced library digest (JSON, or CSV)",
        _obj({"images": _array(_ref("LibraryConsumer"))}),
        [_query("format", "json (default) or csv")],
        extra_content={"text/csv": {"schema": STR}},
    ),
    "/api/v1/library/{name}/{tag}/consumers": _get(
        "Tagged images built on a library tag",
        _obj(
            {
                "name": STR,
                "tag": STR,
                "repository": STR,
                "consumers": _array({"type": "object"}),
            }
        ),
        [_path("name", "library image name"), _path("tag", "library tag")],
    ),
    "/api/v1/scans/{digest}": _get(
        "Every scanner's latest report on a manifest",
        _obj({"digest": STR, "repositories": _array(STR), "reports": _array(_ref("ScanReport"))}),
        [_path("digest", "the manifest digest")],
    ),
    "/api/v1/scans": {
        "post": {
            "summary": "A scanner posts a Trivy, Grype or generic JSON report (scanner auth)",
            "parameters": [
                _query("digest", "the scanned manifest"),
                _query("repository", "require the manifest in this repository"),
                _query("format", "trivy | grype | generic"),
                _query("scanner_version", "when the report does not say"),
            ],
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"type": "object"}}},
            },
            "responses": {
                "201": {"description": "stored", "content": {JSON: {"schema": {"type": "object"}}}},
                "default": {
                    "description": "an error, with the spec's error body",
                    "content": {JSON: {"schema": _ref("Error")}},
                },
            },
        }
    },
    "/api/v1/events/deliveries": _get(
        "Events not yet delivered, oldest first",
        _obj(
            {
                "counts": _obj({"pending": INT, "failed": INT}),
                "deliveries": _array(
                    _obj(
                        {
                            "id": INT,
                            "endpoint": STR,
                            "repository": STR,
                            "type": STR,
                            "event_id": {},
                            "state": STR,
                            "attempts": INT,
                            "created_at": NUM,
                            "next_attempt_at": NUM,
                            "last_error": NSTR,
                        }
                    )
                ),
            }
        ),
        [_query("state", "pending | failed"), _query("endpoint", "endpoint name"), _PAGE_N],
    ),
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Trustyard management API",
        "version": "1",
        "description": (
            "Trustyard's own API beside the OCI Distribution API (`/v2/`): decisions, image "
            "status, quarantine, repositories, the base-image library, scans, events and "
            "health. With authentication on, registry administrators may use all of it and "
            "`viewer`s may GET; a browser session cookie from the console works for GET."
        ),
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "basic": {"type": "http", "scheme": "basic"},
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "trustyard_session"},
        },
    },
}

_BODY = json.dumps(DOCUMENT, indent=2, sort_keys=True) + "\n"


async def openapi_document(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/openapi.json`."""
    return web.Response(text=_BODY, content_type=JSON)


if __name__ == "__main__":
    print(_BODY, end="")
