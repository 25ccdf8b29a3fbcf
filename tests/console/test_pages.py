"""Every console page renders over a populated app (auth off), fast and without a browser: the
browser test checks what a person sees; this one that no page fails on any content shape."""

from __future__ import annotations

import html
import re

from tests.console.test_api import TOKEN, TRIVY, start
from tests.oci import push_image
from tests.signing import push_cosign_signature, sign, simple_signing_payload


async def test_every_page_renders(start_client, tmp_path):
    client, key = await start(start_client, tmp_path)
    signed, _ = await push_image(client, "prod/api", "1.0", layers=[b"api-layer"])
    await push_image(client, "prod/worker", "2.0", layers=[b"worker-layer"])
    payload = simple_signing_payload("prod/api", signed)
    await push_cosign_signature(client, "prod/api", signed, payload, sign(key, payload))
    resp = await client.post(
        f"/api/v1/scans?digest={signed}",
        data=TRIVY.read_bytes(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status == 201
    await client.get("/v2/prod/worker/manifests/2.0")
    pages = {
        "/console/library": "Base-image library",
        "/console/quarantine": "prod/worker:2.0",
        "/console/decisions": "prod/worker",
        "/console/decisions?outcome=deny&window=7d": "needs a signature by release",
        "/console/repositories": "prod/api",
        "/console/repositories?prefix=prod/w": "prod/worker",
        "/console/repositories/prod/api": "1.0",
        "/console/repositories/prod/api/-/1.0": "CVE-2019-14697",
        f"/console/repositories/prod/api/-/{signed}": "verified",
        "/console/repositories/prod/worker/-/2.0": "quarantined",
        "/console/health": "prod is signed by release",
    }
    for path, expected in pages.items():
        resp = await client.get(path)
        body = await resp.text()
        assert resp.status == 200, (path, body[:2000])
        assert resp.content_type == "text/html"
        assert expected in body, path
    # A page over something missing says so, with the API's status and words.
    resp = await client.get("/console/repositories/prod/none/-/1.0")
    assert resp.status == 404 and "repository name not known to registry" in await resp.text()
    resp = await client.get("/console/decisions?since=yesterday-ish")
    assert resp.status == 200 and "since=" in await resp.text()


async def test_pages_page_through_long_lists(start_client, tmp_path):
    client, _ = await start(start_client, tmp_path)
    for i in range(101):
        await push_image(client, f"team/app-{i:03d}", "1.0", layers=[f"layer {i}".encode()])
    first = await (await client.get("/console/repositories")).text()
    assert "team/app-099" in first and "team/app-100" not in first
    next_link = re.search(r'href="(/console/repositories\?last=[^"]+)">Next', first)[1]
    assert next_link == "/console/repositories?last=team%2Fapp-099"
    second = await (await client.get(html.unescape(next_link))).text()
    assert "team/app-100" in second and "team/app-099" not in second
    assert "Next →" not in second and "First page" in second

    page = await (await client.get("/console/decisions?action=push")).text()
    shown = re.findall(r"team/app-(\d{3}):1.0", page)
    assert len(shown) == 50 and shown[0] == "100"  # newest first, 50 a page
    older = html.unescape(re.search(r'href="([^"]+)">Older', page)[1])
    assert "action=push" in older and "last=" in older
    page = await (await client.get(older)).text()
    assert re.findall(r"team/app-(\d{3}):1.0", page)[0] == "050"


async def test_hostile_text_is_escaped(start_client, tmp_path):
    """A scanner's report is text from outside: markup in it is shown, never run."""
    client, _ = await start(start_client, tmp_path)
    digest, _ = await push_image(client, "prod/api", "1.0")
    report = {
        "format": "trustyard.scan.v1",
        "scanner": {"name": "<img src=x onerror=alert(1)>", "version": "1"},
        "findings": [
            {
                "id": "CVE-2024-0001",
                "severity": "high",
                "package": "<script>alert(document.cookie)</script>",
                "installed": '"><svg onload=alert(1)>',
                "fixed": None,
            }
        ],
    }
    resp = await client.post(
        f"/api/v1/scans?digest={digest}",
        json=report,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status == 201, await resp.text()
    page = await (await client.get("/console/repositories/prod/api/-/1.0")).text()
    assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in page
    assert "<script>alert" not in page and "<svg onload" not in page and "<img src=x" not in page
