"""The metadata interface holds every SQL statement: no module outside `storage/` speaks SQL, and
the interface lets no driver type through, so a second backend implements one interface.

`sql_findings` parses a module with `ast` and reports SQL statements in string literals (f-strings
included, docstrings excepted), calls of a database driver's `execute*` methods, and imports of a
database driver. The tree check runs it over every module but the SQLite backend and the few
storage modules that describe or copy the SQLite file, and `tests/` (tests may look inside the
SQLite file they set up); the planted module shows it catches each kind.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from storage.metadata import MetadataDB, SQLiteMetadata

ROOT = Path(__file__).resolve().parents[2]
#: Where SQL may live: the SQLite backend, the GC rules it runs, the schema, the backup's copy
#: of the file.
ALLOWED = (
    "storage/metadata/sqlite/",
    "storage/gc_rules.py",
    "storage/layout.py",
    "storage/backup.py",
)
#: Not product code: tests set up and inspect their own databases.
SKIPPED = ("tests/",)

#: Statement shapes, keywords in capitals (as every statement in this code base is written), so
#: prose such as "delete from the registry" in a message is not taken for SQL.
SQL = re.compile(
    r"^\s*(SELECT|WITH|BEGIN|COMMIT|ROLLBACK|VACUUM)\b"
    r"|\bSELECT\b[^;]*?\bFROM\b"
    r"|\bINSERT\s+(OR\s+[A-Z]+\s+)?INTO\b"
    r"|\bUPDATE\s+[\w.\"]+\s+SET\b"
    r"|\bDELETE\s+FROM\b"
    r"|\b(CREATE|DROP|ALTER)\s+(TEMP\w*\s+|UNIQUE\s+)?(TABLE|INDEX|VIEW|TRIGGER)\b"
    r"|\bPRAGMA\s+\w+"
)
#: Methods of database drivers (sqlite3, aiosqlite, asyncpg, psycopg) that run a statement.
EXECUTE = frozenset(
    {"execute", "executemany", "executescript", "execute_fetchall", "fetch", "fetchrow", "fetchval"}
)
DRIVERS = frozenset({"sqlite3", "aiosqlite", "asyncpg", "psycopg", "psycopg2", "sqlalchemy"})


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _text(node: ast.AST) -> str | None:
    """The text of a string literal; an f-string's placeholders become `?`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) else "?" for part in node.values
        )
    return None


def sql_findings(source: str, name: str) -> list[str]:
    """Every place in `source` that speaks SQL: `name:line: what`."""
    tree = ast.parse(source, name)
    docstrings = _docstrings(tree)
    inside_fstring = {
        id(part)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for part in node.values
    }
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in docstrings or id(node) in inside_fstring:
            continue
        text = _text(node)
        if text is not None and SQL.search(text):
            found.append((node.lineno, f"SQL text {text[:60]!r}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in EXECUTE
        ):
            found.append((node.lineno, f".{node.func.attr}() call"))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for module in modules:
                if module.split(".")[0] in DRIVERS:
                    found.append((node.lineno, f"imports {module}"))
    return [f"{name}:{line}: {what}" for line, what in sorted(found)]


def _outside_the_backend() -> list[Path]:
    modules = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        parts = path.relative_to(ROOT).parts
        if relative.startswith(ALLOWED + SKIPPED) or any(p.startswith(".") for p in parts):
            continue
        if "node_modules" in parts:
            continue
        modules.append(path)
    return modules


def test_no_module_outside_the_backend_speaks_sql() -> None:
    modules = _outside_the_backend()
    names = {path.relative_to(ROOT).parts[0] for path in modules}
    # The walk really covers the floors, and the interface itself.
    assert {"registry", "policies", "bench", "storage"} <= names
    assert ROOT / "storage" / "metadata" / "interface.py" in modules
    assert ROOT / "storage" / "gc.py" in modules
    found = [
        finding
        for path in modules
        for finding in sql_findings(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert found == []


PLANTED = '''
"""A module that says SELECT name FROM tags in its docstring: prose, not a statement."""
import sqlite3
from aiosqlite import connect


async def sneaky(db, repository: str, table: str) -> None:
    """Also prose: UPDATE tags SET digest when asked."""
    rows = await db.read("SELECT digest FROM tags WHERE repository = ?", (repository,))
    await db.read(f"DELETE FROM {table} WHERE repository = ?", (repository,))
    sql = (
        "INSERT OR IGNORE INTO tags (repository, name) "
        "VALUES (?, ?)"
    )
    async with db.transaction() as conn:
        await conn.execute(sql, (repository, "v1"))
    message = "you may delete from the registry what you pushed"
    return rows, message
'''


def test_the_check_catches_planted_sql() -> None:
    found = sql_findings(PLANTED, "planted.py")
    assert found == [
        "planted.py:3: imports sqlite3",
        "planted.py:4: imports aiosqlite",
        "planted.py:9: SQL text 'SELECT digest FROM tags WHERE repository = ?'",
        "planted.py:10: SQL text 'DELETE FROM ? WHERE repository = ?'",
        "planted.py:12: SQL text 'INSERT OR IGNORE INTO tags (repository, name) VALUES (?, ?)'",
        "planted.py:16: .execute() call",
    ]


def test_the_check_catches_sql_planted_in_the_tree(tmp_path: Path) -> None:
    """The same check over a real module of the tree with one statement added to it."""
    module = ROOT / "registry" / "handlers" / "listing.py"
    source = module.read_text() + '\n\nTAGS = "SELECT name FROM tags WHERE repository = ?"\n'
    line = source.count("\n")
    assert sql_findings(module.read_text(), "listing.py") == []
    assert sql_findings(source, "listing.py") == [
        f"listing.py:{line}: SQL text 'SELECT name FROM tags WHERE repository = ?'"
    ]


def test_the_sqlite_backend_implements_the_whole_interface() -> None:
    assert SQLiteMetadata.__abstractmethods__ == frozenset()
    # What a second backend must implement: every public method of the interface is abstract.
    public = {
        name
        for name, member in inspect.getmembers(MetadataDB, inspect.isfunction)
        if not name.startswith("_")
    }
    assert public == set(MetadataDB.__abstractmethods__)
    assert {"put_manifest", "move_library_tag", "replace_scan_report", "append_outbox"} <= public


def test_no_driver_type_crosses_the_interface() -> None:
    """Arguments and results are values: nothing of aiosqlite, sqlite3 or SQL text."""
    leaks = []
    for name in MetadataDB.__abstractmethods__:
        signature = inspect.signature(getattr(MetadataDB, name))
        annotations = [str(p.annotation) for p in signature.parameters.values()]
        annotations.append(str(signature.return_annotation))
        for annotation in annotations:
            if re.search(r"sqlite|Connection|Cursor|\bRow\b", annotation):
                leaks.append(f"{name}: {annotation}")
        if {"sql", "statement", "query"} & set(signature.parameters):
            leaks.append(f"{name}: takes SQL")
    assert leaks == []
