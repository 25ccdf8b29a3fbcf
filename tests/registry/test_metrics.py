"""`GET /metrics`: Prometheus counters by route and status, upload bytes."""

from __future__ import annotations

from tests.oci import push_blob, sha256


async def test_metrics_count_requests_by_route_and_status(client):
    await push_blob(client, "m", b"12345")
    await client.get(f"/v2/m/blobs/{sha256(b'absent')}")
    await client.get("/v2/m/manifests/nope")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert (
        'trustyard_http_requests_total{method="POST",route="upload_start",status="201"} 1' in text
    )
    assert 'trustyard_http_requests_total{method="GET",route="blob",status="404"} 1' in text
    assert 'trustyard_http_requests_total{method="GET",route="manifest",status="404"} 1' in text
    assert "trustyard_blob_bytes_received_total 5" in text
    assert 'trustyard_http_request_duration_seconds_count{method="GET",route="blob"} 1' in text
