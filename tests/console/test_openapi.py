"""The OpenAPI document of the management API: equal to the implementation (every `/api/v1`
route of the application is described, and nothing else), published unchanged in docs/, and
fuzzed with schemathesis against a real, populated registry process: no input to any endpoint
may produce a 5xx or an answer that breaks the document's schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from registry.api_routes import api_not_found
from registry.app import create_app
from registry.handlers.openapi import DOCUMENT
from tests.conftest import make_config
from tests.console.scenario import SCANNER_TOKEN, TRIVY, Http, push_signature, write_policy
from tests.e2e.conftest import OCI_MANIFEST, sha256_digest
from tests.server_process import RegistryProcess, start_registry

PUBLISHED = Path(__file__).parents[2] / "docs" / "openapi.json"
#: Fuzzed inputs per operation: bounded so the whole API is fuzzed in well under a minute.
EXAMPLES = 40


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every `/api/v1` route the application mounts."""
    app = create_app(make_config(tmp_path / "data"))
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        fallback = route.handler is api_not_found  # any other /api/v1 path: a JSON 404
        if not path.startswith("/api/v1/") or fallback or route.method == "HEAD":
            continue
        found.add((route.method.lower(), re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)))
    return found


def test_document_describes_exactly_the_routes(tmp_path):
    documented = {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}
    assert app_routes(tmp_path) == documented


def test_published_copy_is_the_served_document():
    assert json.loads(PUBLISHED.read_text()) == DOCUMENT, (
        "regenerate: python -m registry.handlers.openapi > docs/openapi.json"
    )


async def test_served_document(client):
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == DOCUMENT
    assert DOCUMENT["openapi"] == "3.1.0"


def _push_image(http: Http, name: str, tag: str, layer: bytes) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    for blob in (config, layer):
        status, _, body = http(
            "POST", f"/v2/{name}/blobs/uploads/?digest={sha256_digest(blob)}", data=blob
        )
        assert status == 201, body
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256_digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    status, headers, body = http(
        "PUT", f"/v2/{name}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert status == 201, body
    return headers["Docker-Content-Digest"]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A real registry with a policy, signed and scanned images, decisions and a library."""
    work = tmp_path_factory.mktemp("fuzz")
    key = ec.generate_private_key(ec.SECP256R1())
    policy = write_policy(work, key)
    config = work / "config.yaml"
    config.write_text(json.dumps({"scanners": [{"name": "trivy-ci", "token": SCANNER_TOKEN}]}))
    server = start_registry(
        work / "data", extra_args=["--config", str(config), "--policy", str(policy)]
    )
    try:
        http = Http(server.url)
        api = _push_image(http, "prod/api", "1.0", b"api layer")
        _push_image(http, "prod/worker", "2.0", b"worker layer")
        _push_image(http, "library/base", "1", b"base layer")
        push_signature(http, "prod/api", api, key)
        status, _, body = http(
            "POST",
            f"/api/v1/scans?digest={api}",
            data=TRIVY.read_bytes(),
            headers={"Authorization": f"Bearer {SCANNER_TOKEN}"},
        )
        assert status == 201, body
        assert http("GET", "/v2/prod/worker/manifests/2.0")[0] == 403
        yield server
    finally:
        server.stop()


schema = schemathesis.openapi.from_dict(DOCUMENT)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)
def test_fuzz_the_api_from_its_document(case, target):
    case.call_and_validate(
        base_url=target.url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
