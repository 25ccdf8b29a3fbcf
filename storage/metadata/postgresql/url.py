"""Which query parameters a PostgreSQL metadata URL may carry.

One URL reaches two drivers: asyncpg (reads, locks, notices) and psycopg over libpq (the group-
committed writes, `storage.metadata.postgresql.writer`). They disagree on parameters: asyncpg
sends a parameter it does not know to the server as a setting (`?ssl=require` asks the server to
change its `ssl` setting), libpq refuses one it does not know (`invalid URI query parameter`), and
the writer connects only at the first write, so a URL one driver takes could start a registry
whose every push then fails. A URL is therefore checked once, before anything connects: only the
parameters both read the same way pass, and the usual asyncpg spellings are refused with the one
to write instead.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

#: Connection parameters asyncpg and libpq both read, with the same meaning and values.
SHARED = frozenset(
    {
        "host",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "service",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        # asyncpg sends it as a server setting, libpq as a connection parameter: same effect.
        "application_name",
    }
)

#: asyncpg's spellings libpq refuses -> libpq's, which both drivers read.
INSTEAD = {
    "ssl": "sslmode (sslmode=require, or sslmode=verify-full to check the server's name)",
    "database": "dbname, or the database name as the URL's path",
}


class MetadataUrlInvalid(ValueError):
    """The metadata URL carries a parameter one of the drivers would refuse or misread; the
    message names it and what to write instead."""


def check_url(url: str) -> None:
    """Raise `MetadataUrlInvalid` unless every query parameter of `url` is read the same way by
    asyncpg and libpq (`SHARED`)."""
    query = urlsplit(url).query
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise MetadataUrlInvalid(f"query {query[:100]!r} is not name=value pairs") from None
    for name, value in pairs:
        if name in SHARED:
            continue
        shown = f"{name}={value}"[:100]
        if name in INSTEAD:
            raise MetadataUrlInvalid(
                f"parameter {shown!r} is asyncpg's spelling, which libpq (the driver of the "
                f"writes) refuses: write {INSTEAD[name]}"
            )
        raise MetadataUrlInvalid(
            f"parameter {shown!r} is not one both PostgreSQL drivers read the same way (asyncpg "
            "sends one it does not know to the server as a setting, libpq refuses one it does "
            f"not know); these are: {', '.join(sorted(SHARED))}"
        )
