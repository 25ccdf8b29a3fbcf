"""Cost of a policy decision: cached pull vs uncached, with 100 rules (p50, p99).

    python -m bench.policy_bench [--rules 100] [--iterations 20000]

Three numbers, all in-process (no HTTP), on a scratch data directory removed at the end:

- cached pull: `PolicyGate.check_pull` when the verdict is cached (the dictionary lookup, the
  evidence-version lookup and folding the log row) -- what every pull but the first costs;
- uncached pull: the same call with the cache emptied first: the tags lookup in SQLite, reading
  the image config blob for `labels`, matching and evaluating every rule;
- cached blob / uncached blob: `PolicyGate.check_blob_read` of the image's config blob, with
  the standing cached, and with the blob cache emptied (the pull verdict stays cached: what a
  `docker pull` costs after the manifest GET);
- engine only: `Policy.evaluate` on facts already gathered (matching + evaluating, no I/O).

Targets (issue 4): cached under 0.1 ms, uncached under 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from policies.blob_access import Reader
from policies.decisions import Action
from policies.facts import CHILDREN, CONFIG, PolicyRequest, gather_facts
from policies.gateway import PolicyGate
from policies.loader import parse_policy
from registry.config import load_config
from storage.backends import open_blob_store
from storage.layout import DataLayout
from storage.metadata import ManifestRecord, open_metadata
from storage.oci.manifest import Reference

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def policy_text(count: int) -> str:
    """`count` rules that all match a pull of `bench/app:v1`, of every kind that applies."""
    kinds = [
        '{labels: {org.opencontainers.image.source: "^https://git.example.com/"}}',
        '{annotations: {org.opencontainers.image.revision: "^[0-9a-f]{40}$"}}',
        "{media_types: [oci, docker]}",
        "{max_size: 2GiB}",
        "{platforms: {allowed: [linux/amd64, linux/arm64]}}",
        '{tag_pattern: "^v[0-9]+"}',
        "{immutable_tags: true}",
    ]
    rules = [
        f"  - name: rule {n}\n"
        f"    match: {{repositories: ['**', 'bench/*'], tags: ['v*', 'release-*'], on: [pull]}}\n"
        f"    require: {kinds[n % len(kinds)]}\n"
        for n in range(count)
    ]
    return "version: 1\nrules:\n" + "".join(rules)


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_ms": statistics.median(ordered) / 1e6, "p99_ms": p99 / 1e6}


async def run(rules: int, iterations: int) -> dict[str, dict[str, float]]:
    """Measure the three costs on a scratch registry holding one labelled image."""
    scratch = Path(tempfile.mkdtemp(prefix="policy-bench-"))
    config = load_config(environ={}, overrides={"data_dir": str(scratch)})
    store = open_blob_store(config.blob_store)
    db = await open_metadata(DataLayout(scratch).database)
    try:
        config_blob = json.dumps(
            {
                "os": "linux",
                "architecture": "amd64",
                "config": {
                    "Labels": {"org.opencontainers.image.source": "https://git.example.com/a"}
                },
            }
        ).encode()
        from storage.oci.digests import Digest

        config_digest = Digest.of(config_blob)
        upload = "0" * 32
        await store.start_upload(upload)
        await store.append(upload, config_blob)
        await store.commit(upload, config_digest)
        await db.link_blob("bench/app", str(config_digest), len(config_blob))
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": str(config_digest),
                    "size": len(config_blob),
                },
                "layers": [],
                "annotations": {"org.opencontainers.image.revision": "a" * 40},
            }
        ).encode()
        digest = str(Digest.of(manifest))
        record = ManifestRecord("bench/app", digest, OCI_MANIFEST, manifest)
        await db.put_manifest(record, [Reference(str(config_digest), "blob")], "v1")

        policy = parse_policy(policy_text(rules), "bench")
        gate = PolicyGate(db, store, policy)
        results: dict[str, dict[str, float]] = {}

        # Warm up, and check that every rule matches and holds.
        await gate.check_pull("bench/app", "v1", record, "bench")
        verdict = next(iter(gate._cache.values()))
        assert len(verdict.rules) == rules and verdict.outcome.value == "allow", verdict.reason

        samples = []
        for _ in range(iterations):
            start = time.perf_counter_ns()
            await gate.check_pull("bench/app", "v1", record, "bench")
            samples.append(time.perf_counter_ns() - start)
        results["cached pull"] = percentiles(samples)

        samples = []
        for _ in range(max(iterations // 10, 100)):
            gate._cache.clear()
            start = time.perf_counter_ns()
            await gate.check_pull("bench/app", "v1", record, "bench")
            samples.append(time.perf_counter_ns() - start)
        results["uncached pull"] = percentiles(samples)

        # The blob gate on the image's config blob: cached (the standing looked up by policy
        # version, repository, digest and evidence version), and decided afresh.
        reader = Reader("bench", producer=False)
        await gate.check_blob_read("bench/app", str(config_digest), reader)
        samples = []
        for _ in range(iterations):
            start = time.perf_counter_ns()
            await gate.check_blob_read("bench/app", str(config_digest), reader)
            samples.append(time.perf_counter_ns() - start)
        results["cached blob"] = percentiles(samples)
        samples = []
        for _ in range(max(iterations // 10, 100)):
            gate.blobs.clear()
            start = time.perf_counter_ns()
            await gate.check_blob_read("bench/app", str(config_digest), reader)
            samples.append(time.perf_counter_ns() - start)
        results["uncached blob"] = percentiles(samples)

        request = PolicyRequest(Action.PULL, "bench/app", "v1", digest, ("v1",), "bench")
        facts = await gather_facts(
            request, OCI_MANIFEST, manifest, frozenset({CONFIG, CHILDREN}), db, store
        )
        samples = []
        for _ in range(iterations):
            start = time.perf_counter_ns()
            policy.evaluate(request, facts)
            samples.append(time.perf_counter_ns() - start)
        results["engine only"] = percentiles(samples)
        await gate.flush()
        return results
    finally:
        await db.close()
        await store.close()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=20_000)
    args = parser.parse_args()
    results = asyncio.run(run(args.rules, args.iterations))
    print(f"{args.rules} rules, all matching; milliseconds per decision")
    print(f"{'':<15} {'p50':>9} {'p99':>9}")
    for name, row in results.items():
        print(f"{name:<15} {row['p50_ms']:>9.4f} {row['p99_ms']:>9.4f}")


if __name__ == "__main__":
    main()
