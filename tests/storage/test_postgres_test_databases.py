"""The tests' PostgreSQL databases: a database any client opened is never handed to another test
(dropped); one nobody opened is handed out again, as it is still a fresh copy."""

from __future__ import annotations

import psycopg

from tests.postgres_server import DATABASE_BATCH, PostgresServer


def _name(url: str) -> str:
    return url.split("@/", 1)[1].split("?", 1)[0]


def _next_batches(postgres: PostgresServer, *, with_schema: bool) -> set[str]:
    """The databases handed out over two batches' worth of requests (given back at once)."""
    urls = [postgres.create_database(with_schema=with_schema) for _ in range(2 * DATABASE_BATCH)]
    for url in urls:
        postgres.drop_database(url)
    return {_name(url) for url in urls}


def test_an_opened_database_is_never_handed_out_again(postgres: PostgresServer) -> None:
    for with_schema in (True, False):
        opened = postgres.create_database(with_schema=with_schema)
        with psycopg.connect(opened) as connection:
            connection.execute("SELECT 1")
        postgres.drop_database(opened)
        assert _name(opened) not in _next_batches(postgres, with_schema=with_schema)
        assert _name(opened) not in _next_batches(postgres, with_schema=not with_schema)


def test_an_unopened_database_is_handed_out_again_of_its_kind(postgres: PostgresServer) -> None:
    for with_schema in (True, False):
        unopened = postgres.create_database(with_schema=with_schema)
        postgres.drop_database(unopened)
        assert _name(unopened) not in _next_batches(postgres, with_schema=not with_schema)
        assert _name(unopened) in _next_batches(postgres, with_schema=with_schema)
