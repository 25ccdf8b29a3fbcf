"""Coordination through the metadata database (`storage.metadata.coordination`), on both backends,
between two handles as two processes hold them: named locks, shared generations and (PostgreSQL)
their notices."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from storage.layout import DataLayout
from storage.metadata import GC_KEY, GenerationWatch, MetadataDB, open_metadata, tag_key
from storage.metadata.generations import INTERVAL

#: Only turns a hang into a failure.
PATIENCE = 30.0


async def two_handles(data_dir: Path, url: str | None) -> tuple[MetadataDB, MetadataDB]:
    path = DataLayout(data_dir).database
    return await open_metadata(path, url), await open_metadata(path, url)


@asynccontextmanager
async def watching(
    data_dir: Path, url: str | None, on_change: Callable[[], None], interval: float = INTERVAL
) -> AsyncIterator[tuple[MetadataDB, MetadataDB, GenerationWatch]]:
    """Two handles on one database, the second's watch of the evidence generation (not
    started); all closed at the end."""
    one, two = await two_handles(data_dir, url)
    watch = GenerationWatch(two, "evidence", on_change, interval=interval)
    try:
        yield one, two, watch
    finally:
        await watch.close()
        await one.close()
        await two.close()


@pytest.fixture
async def admin(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the database, as an administrator's."""
    connection = await asyncpg.connect(postgres_url)
    try:
        yield connection
    finally:
        await connection.close()


#: Moves a generation no watch of these tests watches (from 1000 on: never an evidence value).
_MOVE_OTHER = (
    "INSERT INTO shared_generations (name, generation) VALUES ('other', 1000) "
    "ON CONFLICT (name) DO UPDATE SET generation = shared_generations.generation + 1"
)


async def started(watch: GenerationWatch, first_read: Awaitable[object]) -> None:
    """Start `watch` and wait for its first read (`first_read`: what its `on_change` sets),
    which it makes once subscribed to the database's notices where there are any."""
    watch.start()
    async with asyncio.timeout(PATIENCE):
        await first_read


async def test_a_named_lock_has_one_holder_across_handles(
    data_dir: Path, backend_url: str | None
) -> None:
    one, two = await two_handles(data_dir, backend_url)
    try:
        key = tag_key("team/app", "v1")
        async with one.exclusive(key) as held:
            assert held
            async with two.exclusive(key, wait=False) as other:
                assert not other
            # In the same handle too: a process's lock is not its coroutines'.
            async with one.exclusive(key, wait=False) as again:
                assert not again
            # Another key is free.
            async with two.exclusive(tag_key("team/app", "v2"), wait=False) as free:
                assert free
            waiting = asyncio.create_task(_hold(two, key))
            await asyncio.sleep(0.1)  # the waiter tries and retries meanwhile
            assert not waiting.done()
        async with asyncio.timeout(PATIENCE):
            await waiting
        async with two.exclusive(GC_KEY, wait=False) as gc:
            assert gc
    finally:
        await one.close()
        await two.close()


async def _hold(db: MetadataDB, key: str) -> None:
    async with db.exclusive(key) as held:
        assert held


#: Another process that takes the `gc` lock, says so, and waits to be killed.
HOLDER = """
import asyncio, sys
from pathlib import Path
from storage.metadata import GC_KEY, open_metadata

async def main() -> None:
    db = await open_metadata(Path(sys.argv[1]), sys.argv[2] or None)
    async with db.exclusive(GC_KEY) as held:
        assert held
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_lock_held_by_another_process_dies_with_it(
    data_dir: Path, backend_url: str | None
) -> None:
    path = DataLayout(data_dir).database
    db = await open_metadata(path, backend_url)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(path), backend_url or "", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(PATIENCE):
            assert await holder.stdout.readline() == b"held\n"
        async with db.exclusive(GC_KEY, wait=False) as taken:
            assert not taken
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        async with asyncio.timeout(PATIENCE), db.exclusive(GC_KEY) as taken:
            assert taken
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await db.close()


async def test_a_change_on_one_handle_moves_the_generation_the_other_watches(
    data_dir: Path, backend_url: str | None
) -> None:
    changed = asyncio.Event()
    async with watching(data_dir, backend_url, changed.set) as (one, two, watch):
        before = await two.generation("evidence")
        await watch.check()
        changed.clear()  # the first read always counts as a change
        watch.start()
        await one.bump_evidence("team/app")
        assert await two.generation("evidence") == before + 1
        async with asyncio.timeout(PATIENCE):
            await changed.wait()


async def test_postgresql_announces_a_moved_generation_at_once(
    data_dir: Path, postgres_url: str
) -> None:
    """The notice wakes a watcher that would otherwise read only once an hour."""
    changed = asyncio.Event()
    async with watching(data_dir, postgres_url, changed.set, 3600) as (one, _, watch):
        await started(watch, changed.wait())
        assert watch._listener is not None
        changed.clear()
        await one.bump_evidence("team/app")
        async with asyncio.timeout(PATIENCE):
            await changed.wait()


async def test_a_postgresql_notice_tells_the_new_generation_without_a_read(
    data_dir: Path, postgres_url: str, admin: asyncpg.Connection
) -> None:
    """Each moved generation reaches the watcher in its notice: no read per notice (there
    was one per commit of every process), and another generation's notice is not its own."""
    changes: asyncio.Queue[int] = asyncio.Queue()
    reads = 0

    def on_change() -> None:
        changes.put_nowait(reads)

    async with watching(data_dir, postgres_url, on_change, 3600) as (one, two, watch):
        read = two.generation

        async def counted(name: str) -> int:
            nonlocal reads
            reads += 1
            return await read(name)

        two.generation = counted  # type: ignore[method-assign]
        await started(watch, changes.get())
        assert watch._listener is not None
        reads_before = reads
        for _ in range(3):
            # Another generation first: its notice, delivered before the next, changes nothing.
            await admin.execute(_MOVE_OTHER)
            await one.bump_evidence("team/app")
            async with asyncio.timeout(PATIENCE):
                await changes.get()
        assert changes.empty()
        assert reads == reads_before
        assert watch._seen == await read("evidence")


async def test_a_notice_without_the_value_is_read_at_once(
    data_dir: Path, postgres_url: str, admin: asyncpg.Connection
) -> None:
    """A database whose trigger predates the value in the notice (until a process of this
    version opens it) still wakes the watcher at once, which then reads the generation."""
    changed = asyncio.Event()
    async with watching(data_dir, postgres_url, changed.set, 3600) as (one, two, watch):
        await admin.execute(
            "CREATE OR REPLACE FUNCTION trustyard_generation_moved() RETURNS trigger AS $$ "
            "BEGIN PERFORM pg_notify('trustyard_generations', NEW.name); RETURN NEW; END "
            "$$ LANGUAGE plpgsql"
        )
        await started(watch, changed.wait())
        assert watch._listener is not None
        changed.clear()
        await one.bump_evidence("team/app")
        async with asyncio.timeout(PATIENCE):
            await changed.wait()
        assert watch._seen == await two.generation("evidence")
        # Opening the database puts the value back in the notices.
        three = await open_metadata(DataLayout(data_dir).database, postgres_url)
        await three.close()
        body = await admin.fetchval(
            "SELECT prosrc FROM pg_proc WHERE proname = 'trustyard_generation_moved'"
        )
        assert "NEW.generation" in body


async def test_sqlite_sends_no_notices(data_dir: Path) -> None:
    db = await open_metadata(DataLayout(data_dir).database)
    try:
        assert await db.listen_generations(lambda *_: None) is None
    finally:
        await db.close()
