"""What authentication costs on the hot path: manifest GET by tag, open vs authenticated.

    python -m bench.auth_bench                     # 4 servers, 3 rounds of 10 s, all at once
    python -m bench.auth_bench --rounds 1 --duration 5
    python -m bench.auth_bench --together all      # all four at once (none: one at a time)

Four Trustyards run side by side from scratch directories on 127.0.0.1:

| server | what it has |
| --- | --- |
| open | no `auth` section, no policy |
| auth | `auth` on (a users file with a robot, 20 permission rules), no policy |
| open+policy | the registry benchmark's policy file (`policy_file`, `--rules` rules) |
| auth+policy | both |

The policy holds a signature rule (a cosign key that signed the image) and a vulnerability rule
(a clean scan) among its rules, and gates blobs.

Each is seeded with the same kind of small image (bench/workloads.py `seed_image`), signed and
scanned where the policy asks. The authenticated servers are loaded with a bearer token the
robot got from `/token` (Basic with its robot token, scope `repository:bench/manifest:pull`),
sent with every request as docker sends it; wrk then GETs the manifest by tag for `--duration`
seconds at `--connections` connections per server.

By default each round loads every open server together with its authenticated twin (open with
auth, then open+policy with auth+policy), each with its own wrk: the two share whatever else runs
on the machine, so their ratio stays fair when the machine is busy (runs one after the other
measure the background as much as the servers), and on 2 cores each gets about one. The order
flips every round. The table shows the median (min-max) over `--rounds` of req/s, p50, p99 and
the server's CPU per request, and the per-round ratios auth / open without and with the policy
(req/s: ↑ better, 1.00x = free; p99 and CPU: ↓ better).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.evidence import Evidence
from bench.registry_bench import policy_file
from bench.workloads import (
    BenchError,
    LoadResult,
    make_tempdir,
    run_wrk,
    seed_image,
    tree_cpu_seconds,
    wrk_available,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = "bench/manifest"
SERVICE = "trustyard-bench"
ROBOT = "bench-puller"
ADMIN = "bench-admin"
VARIANTS = ("open", "auth", "open+policy", "auth+policy")


def permissions() -> list[dict[str, Any]]:
    """Twenty rules as a team registry might have them: the robot's rule is one of many."""
    rules: list[dict[str, Any]] = [
        {"namespace": f"team{i:02d}/**", "groups": {f"team{i:02d}": "push"}} for i in range(16)
    ]
    rules += [
        {"namespace": "library/**", "authenticated": "pull"},
        {"namespace": "bench/**", "groups": {"pullers": "pull"}},
        {"namespace": ["bench/*", "ci/**"], "users": {"nobody-else": "push"}},
        {"namespace": "**", "groups": {"ops": "admin"}},
    ]
    return rules


@dataclass
class Target:
    """One running server under load."""

    variant: str
    url: str
    pid: int
    stop: Any
    headers: dict[str, str]


def write_config(root: Path, variant: str, evidence: Evidence) -> Path:
    """The `--config` file: the scanner the evidence posts as, and `auth` when the variant has
    it (a one-hour token, so no token expires during the run)."""
    config: dict[str, Any] = {"scanners": [{"name": "bench-scanner", "token": evidence.token}]}
    if variant.startswith("auth"):
        config["auth"] = {
            "service": SERVICE,
            "token": {"ttl": "1h"},
            "permissions": permissions(),
        }
    path = root / "config.json"
    path.write_text(json.dumps(config))
    return path


def write_users(data_dir: Path) -> str:
    """The users file (an admin who seeds the image, the robot that pulls); the robot token."""
    from registry.auth.users import UserStore

    store = UserStore(data_dir / "auth" / "users.yaml")
    store.add_user(ADMIN, "bench-admin-password", ["ops"], replace=False)
    return store.add_robot(ROBOT, ["pullers"], replace=False)


def basic(user: str, secret: str) -> str:
    """An `Authorization: Basic` value."""
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


async def start(tmp: Path, variant: str, args: argparse.Namespace, evidence: Evidence) -> Target:
    """Start one server, seed it (signed and scanned when its policy asks) and, with auth, get
    the robot's pull token."""
    from tests.server_process import start_registry

    root = tmp / variant.replace("+", "-")
    data_dir = root / "data"
    root.mkdir(parents=True)
    extra = ["--config", str(write_config(root, variant, evidence))]
    if variant.endswith("+policy"):
        extra += [
            "--policy",
            str(policy_file(root / "policy.yaml", args.rules, evidence.public_pem())),
        ]
    robot_token = write_users(data_dir) if variant.startswith("auth") else None
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    proc = start_registry(data_dir, extra_args=extra, env=env, timeout=args.start_timeout)
    target = Target(variant, proc.url, proc.process.pid, proc.stop, {})
    try:
        admin = {"Authorization": basic(ADMIN, "bench-admin-password")} if robot_token else {}
        async with aiohttp.ClientSession(headers=admin) as session:
            signs = variant.endswith("+policy")
            await seed_image(
                session,
                proc.url,
                REPOSITORY,
                evidence=(lambda d: evidence.add(session, proc.url, REPOSITORY, d))
                if signs
                else None,
            )
        if robot_token is not None:
            target.headers = {
                "Authorization": "Bearer " + await robot_pull_token(proc.url, robot_token)
            }
        return target
    except BaseException:
        proc.stop()
        raise


async def robot_pull_token(url: str, robot_token: str) -> str:
    """A pull token for the benchmark repository, as docker gets one after a 401."""
    params = {"service": SERVICE, "scope": f"repository:{REPOSITORY}:pull"}
    headers = {"Authorization": basic(ROBOT, robot_token)}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/token", params=params, headers=headers) as resp:
            if resp.status != 200:
                raise BenchError(f"/token answered {resp.status}: {await resp.text()}")
            token = (await resp.json())["token"]
        # The token reads the manifest: checked once, so the timed runs measure successes.
        async with session.get(
            f"{url}/v2/{REPOSITORY}/manifests/bench",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.oci.image.manifest.v1+json",
            },
        ) as resp:
            if resp.status != 200:
                raise BenchError(f"GET with the token answered {resp.status}: {await resp.text()}")
    return str(token)


async def load(target: Target, args: argparse.Namespace, workdir: Path) -> tuple[LoadResult, float]:
    """One wrk run against `target`; the result and the server's CPU cores over it."""
    workdir.mkdir(parents=True, exist_ok=True)
    cpu0 = tree_cpu_seconds(target.pid)
    result = await run_wrk(
        args.wrk,
        f"{target.url}/v2/{REPOSITORY}/manifests/bench",
        "GET",
        args.connections,
        args.duration,
        workdir,
        threads=args.threads,
        headers=target.headers,
    )
    cores = (tree_cpu_seconds(target.pid) - cpu0) / (result.duration_s or args.duration)
    return result, cores


def pin(pid: int, cpu: int) -> None:
    """Keep every thread of the server `pid` on one CPU."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def groups(targets: list[Target], together: str) -> list[list[Target]]:
    """Which servers are loaded at the same time: each open one with its authenticated twin
    (`pairs`), all four (`all`), or each alone (`none`)."""
    if together == "all":
        return [targets]
    if together == "none":
        return [[t] for t in targets]
    by_variant = {t.variant: t for t in targets}
    return [
        [by_variant["open"], by_variant["auth"]],
        [by_variant["open+policy"], by_variant["auth+policy"]],
    ]


def cell(values: list[float], digits: int = 0) -> str:
    """Median (min-max)."""
    if not values:
        return "n/a"
    fmt = f"{{:.{digits}f}}"
    med = fmt.format(statistics.median(values))
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ratio(
    samples: dict[str, list[dict[str, float]]], metric: str, num: str, den: str
) -> list[float]:
    """Per-round ratios of `metric` between two variants (same round, same background)."""
    return [
        a[metric] / b[metric] for a, b in zip(samples[num], samples[den], strict=True) if b[metric]
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the servers, run the rounds, stop everything."""
    tmp = make_tempdir(args.tmp_dir)
    evidence = Evidence()
    targets: list[Target] = []
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    try:
        for variant in VARIANTS:
            targets.append(await start(tmp, variant, args, evidence))
        if args.pin is not None:
            for target in targets:
                pin(target.pid, args.pin)
        for round_no in range(args.rounds):
            workdir = tmp / f"round-{round_no}"
            order, results = [], []
            for group in groups(targets, args.together):
                group = group if round_no % 2 == 0 else list(reversed(group))
                order += group
                results += await asyncio.gather(
                    *(load(t, args, workdir / t.variant.replace("+", "-")) for t in group)
                )
            for target, (res, cores) in zip(order, results, strict=True):
                if res.requests == 0 or res.error_count > res.requests * 0.01:
                    raise BenchError(
                        f"{target.variant}: {res.error_count} of {res.requests} failed: "
                        f"{res.errors}"
                    )
                cpu_us = cores / res.rps * 1e6 if res.rps else 0.0
                samples[target.variant].append(
                    {
                        "rps": res.rps,
                        "p50": res.p50_ms,
                        "p99": res.p99_ms,
                        "cores": cores,
                        "cpu_us": cpu_us,
                    }
                )
                print(
                    f"round {round_no + 1} {target.variant:12} {res.rps:8.0f} req/s  "
                    f"p50 {res.p50_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms  "
                    f"server {cores:.2f} cores, {cpu_us:.0f} µs/request",
                    file=sys.stderr,
                )
    finally:
        for target in targets:
            target.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "samples": samples,
        "ratios": {
            "auth/open req/s": ratio(samples, "rps", "auth", "open"),
            "auth/open p99": ratio(samples, "p99", "auth", "open"),
            "auth+policy/open+policy req/s": ratio(samples, "rps", "auth+policy", "open+policy"),
            "auth+policy/open+policy p99": ratio(samples, "p99", "auth+policy", "open+policy"),
            "auth+policy/open+policy CPU per request": ratio(
                samples, "cpu_us", "auth+policy", "open+policy"
            ),
        },
    }


def table(result: dict[str, Any], args: argparse.Namespace) -> str:
    """The Markdown table of a run."""
    samples = result["samples"]
    lines = [
        "| server | GET tag (req/s) ↑ | p50 (ms) ↓ | p99 (ms) ↓ | server CPU (cores) "
        "| CPU per request (µs) ↓ |",
        "|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        rows = samples[variant]
        lines.append(
            f"| {variant} | {cell([r['rps'] for r in rows])} | {cell([r['p50'] for r in rows], 2)} "
            f"| {cell([r['p99'] for r in rows], 1)} | {cell([r['cores'] for r in rows], 2)} "
            f"| {cell([r['cpu_us'] for r in rows])} |"
        )
    lines.append("")
    for name, values in result["ratios"].items():
        lines.append(f"- {name}: {cell(values, 2)}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections per server (32)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads per server (1)")
    p.add_argument("--rules", type=int, default=100, help="rules in the policy file (100)")
    p.add_argument(
        "--together",
        choices=("pairs", "all", "none"),
        default="pairs",
        help="servers loaded at once: each open one with its auth twin (default), all, none",
    )
    p.add_argument(
        "--pin",
        type=int,
        default=None,
        metavar="CPU",
        help="run every server on this CPU: the two of a pair then share one core equally, "
        "whatever else the machine runs (wrk is not pinned)",
    )
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--tmp-dir", default=None, help="where the scratch directory goes")
    p.add_argument("--json", type=Path, default=None, help="also write the samples here")
    p.add_argument("--wrk", default=wrk_available(), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    args = parse_args(argv)
    if not args.wrk:
        print("wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 2
    started = time.time()
    result = asyncio.run(run(args))
    result["args"] = {k: v for k, v in vars(args).items() if k != "json"}
    print(table(result, args))
    print(
        f"\n({args.rounds} rounds of {args.duration:.0f} s, {time.time() - started:.0f} s in all)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
