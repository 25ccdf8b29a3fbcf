"""The `trustyard library` commands: `import` a base image, `sync` declared tags from their
`source:` upstream, list `stale` images (the rebuild list).

`registry.cli` registers them with `add_library_commands` and hands them over with
`run_library_command`. Both work on the data directory directly (in process, no HTTP), with the
`library:` section of the configured policy file (or `--policy FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from policies.base_image_rule import format_age
from policies.library.declaration import Library
from policies.library.importer import LibraryImportError, import_image
from policies.library.reports import stale_images
from policies.loader import PolicyError, load_policy
from policies.rules import short
from registry.config import Config
from registry.events.hub import EventHub
from registry.events.settings import EventSettings
from registry.progress import terminal_progress
from registry.proxy.sync import SYNC_ACTOR, SyncError, sync_tags, targets
from storage.backends import open_blob_store
from storage.layout import DataLayout
from storage.metadata import open_metadata

LIBRARY_COMMANDS = ("library",)


def add_library_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `library import` and `library stale` with the `trustyard` parser."""
    library = commands.add_parser("library", help="the curated base-image library")
    actions = library.add_subparsers(dest="action", required=True)
    imports = actions.add_parser(
        "import", help="import an OCI image layout or a docker save tarball as a library tag"
    )
    common(imports)
    imports.add_argument("path", type=Path, help="OCI layout directory or tar, or docker save tar")
    imports.add_argument("--as", dest="reference", required=True, help="NAME:TAG, declared")
    imports.add_argument("--ref", help="which image of a layout or archive holding several")
    imports.add_argument("--policy", type=Path, help="policy file declaring the library")
    sync = actions.add_parser(
        "sync", help="fetch declared library tags from their source: upstream and import them"
    )
    common(sync)
    sync.add_argument("reference", nargs="?", help="NAME or NAME:TAG (default: every tag)")
    sync.add_argument("--policy", type=Path, help="policy file declaring the library")
    stale = actions.add_parser("stale", help="images built on a replaced library digest")
    common(stale)
    stale.add_argument("--policy", type=Path, help="policy file declaring the library")
    stale.add_argument("--json", action="store_true", help="one JSON object per line")


def run_library_command(config: Config, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run `library import|stale`; the process exit code."""
    out = out or sys.stdout
    if args.action == "import":
        return asyncio.run(_import(config, args, out))
    if args.action == "sync":
        return asyncio.run(_sync(config, args, out))
    return asyncio.run(_stale(config, args.json, out))


def _library(config: Config, path: Path | None) -> Library | None:
    path = path or config.policy_file
    if path is None:
        return None
    return load_policy(path).library


async def _import(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    try:
        library = _library(config, args.policy)
    except PolicyError as exc:
        print(f"trustyard: invalid policy:\n{exc}", file=sys.stderr)
        return 2
    store = open_blob_store(config.blob_store)
    db = await open_metadata(DataLayout(config.data_dir).database, config.metadata_url)
    try:
        result = await import_image(
            db,
            store,
            library,
            args.path,
            args.reference,
            ref_name=args.ref,
            progress=terminal_progress("library import: bytes"),
        )
    except LibraryImportError as exc:
        print(f"trustyard: library import: {exc}", file=sys.stderr)
        return 1
    finally:
        await db.close()
        await store.close()
    platforms = f" ({', '.join(result.platforms)})" if result.platforms else ""
    print(
        f"imported {result.repository}:{result.tag} = {result.digest}{platforms} from "
        f"{result.format}: {result.blobs_added} blobs added, {result.blobs_present} already "
        "present",
        file=out,
    )
    if result.pending is not None:
        print(
            f"{result.name}:{result.tag} stays on its current digest until {result.digest} is "
            f"signed: {result.pending}",
            file=out,
        )
    elif not result.moved:
        print(f"{result.name}:{result.tag} already pointed to {result.digest}", file=out)
    return 0


async def _sync(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    """Fetch each declared tag (or the one named) from its source upstream and import it."""
    try:
        library = _library(config, args.policy)
    except PolicyError as exc:
        print(f"trustyard: invalid policy:\n{exc}", file=sys.stderr)
        return 2
    if library is None:
        print(
            "trustyard: library sync: the policy file declares no library: section", file=sys.stderr
        )
        return 2
    if config.proxy is None:
        print("trustyard: library sync: no upstreams: are configured", file=sys.stderr)
        return 2
    try:
        targets(library, args.reference)  # a name nothing matches is refused before any work
    except SyncError as exc:
        print(f"trustyard: library sync: {exc}", file=sys.stderr)
        return 2
    store = open_blob_store(config.blob_store)
    db = await open_metadata(DataLayout(config.data_dir).database, config.metadata_url)
    # A move is queued as `library.tag.updated` in the outbox, in the move's transaction: the
    # server delivers it.
    announce = EventHub(db, EventSettings.from_config(config)).library_moved(SYNC_ACTOR)
    try:
        done = await sync_tags(db, store, library, config.proxy, announce, args.reference)
    finally:
        await db.close()
        await store.close()
    for synced in done:
        print(synced.line(), file=out if synced.state != "failed" else sys.stderr)
    return 1 if any(s.state == "failed" for s in done) else 0


async def _stale(config: Config, as_json: bool, out: TextIO) -> int:
    db = await open_metadata(DataLayout(config.data_dir).database, config.metadata_url)
    try:
        found = await stale_images(db)
    finally:
        await db.close()
    now = time.time()
    if as_json:
        for consumer in found:
            print(json.dumps(consumer.as_json(now)), file=out)
        return 0
    if not found:
        print("nothing to rebuild: every image is on its library tag's current digest", file=out)
        return 0
    rows = [("REPOSITORY", "TAG", "DIGEST", "BASE", "BEHIND")] + [
        (
            c.repository,
            c.tag,
            short(c.digest),
            f"{c.library_name}:{c.library_tag}@{short(c.base_digest)}",
            f"replaced {format_age(c.behind(now))} ago",
        )
        for c in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )
    return 0
