"""The policy commands of `trustyard`: `policy check`, `policy explain` and `decisions`.

`registry.cli` registers them with `add_policy_commands` and hands them over with
`run_policy_command`; they live here so that the policy's command line sits beside the policy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from policies.decisions import Action, Outcome
from policies.facts import PolicyRequest
from policies.gateway import PolicyGate
from policies.loader import PolicyError, load_policy
from registry.config import Config
from shared.durations import parse_since
from storage.backends import open_blob_store
from storage.layout import DataLayout
from storage.metadata import open_metadata
from storage.oci.digests import parse_digest
from storage.oci.grammar import check_name, check_tag

POLICY_COMMANDS = ("policy", "decisions")


def add_policy_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `policy check|explain` and `decisions` with the `trustyard` parser."""
    policy = commands.add_parser("policy", help="check a policy file, explain its decisions")
    actions = policy.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate a policy file; exit 1 when invalid")
    common(check)
    check.add_argument("file", type=Path)
    check.add_argument("--json", action="store_true", help="print the result as one JSON object")
    explain = actions.add_parser(
        "explain", help="evaluate a policy file against an image in the registry"
    )
    common(explain)
    explain.add_argument("file", type=Path)
    explain.add_argument("image", help="REPOSITORY:TAG or REPOSITORY@DIGEST")
    explain.add_argument(
        "--action", choices=[a.value for a in Action], default="pull", help="default: pull"
    )
    explain.add_argument("--json", action="store_true", help="print the verdict as JSON")
    decisions = commands.add_parser("decisions", help="show the policy decision log")
    common(decisions)
    decisions.add_argument("--repository")
    decisions.add_argument("--outcome", choices=[o.value for o in Outcome])
    decisions.add_argument("--action", choices=[a.value for a in Action])
    decisions.add_argument("--since", help="epoch seconds, ISO 8601 time, or a duration ago (1h)")
    decisions.add_argument("-n", "--limit", type=int, default=50, help="rows (default 50)")
    decisions.add_argument("--json", action="store_true", help="one JSON object per line")


def run_policy_command(config: Config, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run `policy check|explain` or `decisions`; the process exit code."""
    out = out or sys.stdout
    if args.command == "decisions":
        return asyncio.run(show_decisions(config, args, out))
    if args.action == "check":
        return check_policy(args.file, out, as_json=args.json)
    return asyncio.run(
        explain(config, args.file, args.image, Action(args.action), out, as_json=args.json)
    )


def check_policy(path: Path, out: TextIO | None = None, *, as_json: bool = False) -> int:
    """Validate a policy file: print every problem (exit 1) or a summary (exit 0); with
    `as_json`, one JSON object on `out` either way."""
    out = out or sys.stdout
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        if as_json:
            problems = [
                {"line": p.line, "path": p.path, "message": p.message} for p in exc.problems
            ]
            print(json.dumps({"file": str(path), "valid": False, "problems": problems}), file=out)
            return 1
        print(exc, file=sys.stderr)
        count = len(exc.problems)
        print(f"{path}: invalid ({count} problem{'s' if count != 1 else ''})", file=sys.stderr)
        return 1
    if as_json:
        rules = [
            {
                "name": rule.name,
                "line": rule.line,
                "on": sorted(a.value for a in rule.match.actions),
                "mode": rule.mode,
            }
            for rule in policy.rules
        ]
        summary = {"mode": policy.mode, "version": policy.version, "rules": rules}
        print(json.dumps({"file": str(path), "valid": True, "problems": [], **summary}), file=out)
        return 0
    print(
        f"{path}: valid, {len(policy.rules)} rules, mode {policy.mode}, version "
        f"{policy.version[:19]}",
        file=out,
    )
    print(f"  {policy.describe_default()}", file=out)
    for rule in policy.rules:
        actions = ",".join(sorted(a.value for a in rule.match.actions))
        print(
            f"  line {rule.line}: {rule.name!r} on {actions} in {rule.match.repositories}"
            + (f" tags {rule.match.tags}" if rule.match.tags else "")
            + (" (warn)" if rule.mode == "warn" else ""),
            file=out,
        )
    return 0


def split_image(image: str) -> tuple[str, str]:
    """`repo/name:tag` or `repo/name@sha256:...` -> (repository, reference)."""
    if "@" in image:
        name, _, reference = image.partition("@")
        parse_digest(reference)
    else:
        slash = image.rfind("/")
        colon = image.rfind(":")
        if colon <= slash:
            raise ValueError(f"{image!r}: expected REPOSITORY:TAG or REPOSITORY@DIGEST")
        name, reference = image[:colon], check_tag(image[colon + 1 :])
    return check_name(name), reference


async def explain(
    config: Config,
    path: Path,
    image: str,
    action: Action,
    out: TextIO | None = None,
    *,
    as_json: bool = False,
) -> int:
    """Print each matching rule's verdict on `action` of `image`: exit 0 allowed, 1 denied."""
    out = out or sys.stdout
    try:
        policy = load_policy(path)
        repository, reference = split_image(image)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"trustyard: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    store = open_blob_store(config.blob_store)
    db = await open_metadata(DataLayout(config.data_dir).database)
    try:
        if reference.startswith("sha256:") or reference.startswith("sha512:"):
            record = await db.get_manifest(repository, reference)
        else:
            record = await db.get_tagged_manifest(repository, reference)
        if record is None:
            print(f"trustyard: {image}: no such manifest in {config.data_dir}", file=sys.stderr)
            return 2
        by_tag = not reference.startswith("sha")
        if action is Action.PUSH:
            tags: tuple[str, ...] = (reference,) if by_tag else ()
        elif action is Action.DELETE and by_tag:
            tags = (reference,)
        else:
            tags = tuple(await db.tags_of(repository, record.digest))
        request = PolicyRequest(action, repository, reference, record.digest, tags, "cli")
        gate = PolicyGate(db, store, policy)
        verdict = await gate.evaluate(request, record.media_type, record.content)
    finally:
        await db.close()
        await store.close()
    lines = {rule.name: rule.line for rule in policy.rules}
    if as_json:
        verdicts = [
            {
                "rule": rule.rule,
                "line": lines.get(rule.rule, 0),
                "mode": rule.mode,
                "outcome": rule.outcome.value,
                "reason": rule.reason,
            }
            for rule in verdict.rules
        ]
        print(
            json.dumps(
                {
                    "policy": str(path),
                    "policy_version": policy.version,
                    "action": action.value,
                    "repository": repository,
                    "reference": reference,
                    "digest": record.digest,
                    "rules": verdicts,
                    "outcome": verdict.outcome.value,
                }
            ),
            file=out,
        )
        return 1 if verdict.outcome is Outcome.DENY else 0
    print(
        f"policy {path} ({policy.version[:19]}): {action.value} {repository} {reference} "
        f"({record.digest[:19]}…)",
        file=out,
    )
    lines = {rule.name: rule.line for rule in policy.rules}
    if not policy.matching(request):
        print(f"  no rule matches; {policy.describe_default()}", file=out)
    for rule in verdict.rules:
        label = {Outcome.ALLOW: "holds", Outcome.DENY: "DENIES", Outcome.WARN: "warns"}
        print(
            f"  {label[rule.outcome]:<7} rule {rule.rule!r} (line {lines.get(rule.rule, 0)}, "
            f"{rule.mode}): {rule.reason}",
            file=out,
        )
    outcome = verdict.outcome
    quarantined = " (quarantined: stored but not pullable)" if action is Action.PULL else ""
    print(f"outcome: {outcome.value}{quarantined if outcome is Outcome.DENY else ''}", file=out)
    return 1 if outcome is Outcome.DENY else 0


async def show_decisions(
    config: Config, args: argparse.Namespace, out: TextIO | None = None
) -> int:
    """Print the newest logged decisions, filtered."""
    out = out or sys.stdout
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"trustyard: {exc}", file=sys.stderr)
        return 2
    db = await open_metadata(DataLayout(config.data_dir).database)
    try:
        rows = await db.list_decisions(
            repository=args.repository,
            outcome=args.outcome,
            action=args.action,
            since=since,
            limit=max(args.limit, 0),
        )
    finally:
        await db.close()
    for row in rows:
        if args.json:
            print(json.dumps(asdict(row)), file=out)
            continue
        when = datetime.fromtimestamp(row.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        repeats = f" (x{row.repeats})" if row.repeats > 1 else ""
        print(
            f"{when} {row.outcome:<5} {row.action:<6} {row.repository}:{row.reference} "
            f"{row.identity}{repeats}: {row.reason}",
            file=out,
        )
    return 0
