"""A real PostgreSQL server for the tests, started in a temporary directory.

Debian's `postgresql` package (`.ci/install-postgres-deps.sh`) puts `initdb`, `pg_ctl` and
`postgres` under `/usr/lib/postgresql/<major>/bin`. The cluster is created and run as a non-root
user (PostgreSQL refuses to run as root: when the tests run as root, the `postgres` account the
package creates runs it). It listens on a unix socket in its own directory only (no TCP port, so
nothing can collide with another helper's server), trusts local connections, and is stopped (and
its directory removed with the test session's temporary files) at the end.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import subprocess
import threading
import uuid
from pathlib import Path

#: Where Debian installs each major version's server binaries.
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
#: The superuser of the test cluster (a role name, not an operating-system account).
SUPERUSER = "trustyard"
#: Databases `create_database` makes per `psql` run.
DATABASE_BATCH = 16
#: The database `create_database(with_schema=True)` copies: Trustyard's schema, made once per
#: server by the product's own `open_metadata` (never a copy of its SQL kept here).
SCHEMA_TEMPLATE = "trustyard_schema_template"
#: What the server logs (`log_connections`) when a client has connected to a database.
_CONNECTED = re.compile(r"connection authorized: user=\S+ database=(\S+)")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server binary folder, or None when none is installed."""
    if not _DEBIAN_ROOT.is_dir():
        return None
    versions = sorted(
        (p for p in _DEBIAN_ROOT.iterdir() if (p / "bin" / "pg_ctl").exists()),
        key=lambda p: int(p.name) if p.name.isdigit() else 0,
    )
    return versions[-1] / "bin" if versions else None


class PostgresServer:
    """One PostgreSQL cluster in `root`, listening on `root/socket/.s.PGSQL.5432`."""

    def __init__(self, root: Path) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (bash .ci/install-postgres-deps.sh)")
        self.bin = binaries
        self.root = root
        self.data = root / "cluster"
        self.socket_dir = root / "socket"
        self._options = ""
        #: Databases made ahead and not handed out yet (empty; with the schema); those given
        #: back, to drop.
        self._spare: list[str] = []
        self._spare_with_schema: list[str] = []
        self._template_made = False
        #: The kind of each database made (True: with the schema), and those a client ever
        #: connected to (read from the server's log).
        self._with_schema: dict[str, bool] = {}
        self._connected: set[str] = set()
        self._log_read = 0
        self._given_back: list[str] = []
        self._dropped: list[str] = []
        self._lock = threading.Lock()

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> None:
        """initdb, then start the server and wait until it accepts connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.getuid() == 0:
            account = pwd.getpwnam("postgres")
            for path in (self.root, self.socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
        init = self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
        self._options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
            # A test cluster: durability is not what these tests measure, speed is welcome.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=32MB "
            # Which databases were ever connected to: one never opened is handed out again.
            "-c log_connections=on"
        )
        self._pg_ctl_start()

    def _pg_ctl_start(self) -> None:
        started = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            self._options,
            "-w",
            "-t",
            "60",
            "start",
        )
        if started.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()}\n{log}")

    def restart(self) -> None:
        """Start the stopped server again on its existing cluster."""
        self._pg_ctl_start()

    def stop(self) -> None:
        """Stop the server (fast shutdown) and wait for it."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        """A connection URL for `database` over the unix socket."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def create_database(self, *, with_schema: bool = False) -> str:
        """A fresh database; its URL. Empty, or `with_schema`: with Trustyard's schema already
        made (a copy of a template the product made once), so a registry opening it skips the
        schema's creation, the slowest part of its start on PostgreSQL. Made a batch at a time
        (one `psql` run for `DATABASE_BATCH` of them, by file copy: a few milliseconds each where
        a `psql` process per database costs a tenth of a second or more), and the batch's run
        also drops the databases given back with `drop_database`."""
        with self._lock:
            spare = self._spare_with_schema if with_schema else self._spare
            if not spare:
                self._sort_given_back()
            if not spare:
                if with_schema and not self._template_made:
                    self._make_template()
                spare.extend(self._refill(SCHEMA_TEMPLATE if with_schema else None))
            return self.url(spare.pop())

    def drop_database(self, url: str) -> None:
        """Give a database back: dropped with the next batch (disk stays bounded over a
        session of thousands of tests), or, when no client ever connected to it (a test that
        started no registry), handed out again as it is: byte for byte a fresh copy."""
        with self._lock:
            self._given_back.append(url.split("@/", 1)[1].split("?", 1)[0])

    def _sort_given_back(self) -> None:
        """Put the databases given back that nobody opened with the spare ones, the others with
        those to drop. A connection is logged by its server process before the client may send
        a query; the test that gave the database back is over, so its connections are in."""
        log = self.root / "server.log"
        with log.open("rb") as text:
            text.seek(self._log_read)
            new = text.read()
        complete = new.rfind(b"\n") + 1  # a line half written is read next time
        self._log_read += complete
        self._connected.update(_CONNECTED.findall(new[:complete].decode(errors="replace")))
        for name in self._given_back:
            if name in self._connected or name not in self._with_schema:
                self._dropped.append(name)
                self._with_schema.pop(name, None)
            elif self._with_schema[name]:
                self._spare_with_schema.append(name)
            else:
                self._spare.append(name)
        self._given_back.clear()

    def _refill(self, template: str | None) -> list[str]:
        names = [f"t_{uuid.uuid4().hex[:16]}" for _ in range(DATABASE_BATCH)]
        # FILE_COPY (PostgreSQL 15 and later) copies the template's few files instead of
        # writing them to the WAL block by block: much faster for an empty database.
        strategy = " STRATEGY FILE_COPY" if int(self.bin.parent.name) >= 15 else ""
        copy = f' TEMPLATE "{template}"' if template is not None else ""
        statements = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in self._dropped]
        statements += [f'CREATE DATABASE "{name}"{copy}{strategy}' for name in names]
        self._psql(statements)
        self._dropped.clear()
        self._with_schema.update(dict.fromkeys(names, template is not None))
        return names

    def _psql(self, statements: list[str]) -> None:
        command = [str(self.bin / "psql"), "-h", str(self.socket_dir), "-U", SUPERUSER]
        command += ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
        for statement in statements:  # each -c is its own transaction, as CREATE DATABASE needs
            command += ["-c", statement]
        created = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if created.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE failed: {created.stderr.strip()}")

    def _make_template(self) -> None:
        """Create the schema template: an empty database that Trustyard's `open_metadata` opens
        once (creating its tables, triggers and schema version) and closes again (a template
        is copied only while nobody is connected to it)."""
        self._psql([f'CREATE DATABASE "{SCHEMA_TEMPLATE}"'])
        failure: list[BaseException] = []
        # A thread of its own: the caller may be a test's thread with an event loop of its own.
        worker = threading.Thread(target=_make_schema, args=(self.url(SCHEMA_TEMPLATE), failure))
        worker.start()
        worker.join()
        if failure:
            raise RuntimeError(f"the schema template was not made: {failure[0]!r}")
        self._template_made = True


def _make_schema(url: str, failure: list[BaseException]) -> None:
    """Open and close the metadata database at `url` (creating Trustyard's schema there)."""
    from storage.metadata import open_metadata

    async def make() -> None:
        db = await open_metadata(Path("unused.sqlite"), url)
        await db.close()

    try:
        asyncio.run(make())
    except BaseException as exc:  # reported to the caller's thread
        failure.append(exc)
