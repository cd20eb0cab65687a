"""The run database's schema: Alembic revisions, creating, upgrading and checking it.

Creating or upgrading happens under a lock (a file lock beside a SQLite file, a
transaction-scoped advisory lock on PostgreSQL), so processes opening one new database
at once create it once. A database at an older revision is refused with the command that
upgrades it; one at a revision this hlbd does not know (a newer hlbd's) is refused too.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, exc, inspect, text

from hlbd.errors import NoDatabaseError, SchemaTooNewError, StoreError
from hlbd.fileio import installed_folder
from hlbd.store import connect
from hlbd.store.connect import check_database_file, sqlite_path

# The Alembic environment: the top-level migrations/ folder of a checkout, shipped inside
# the package as hlbd.migrations (pyproject's package-dir), so an installed hlbd has it.
MIGRATIONS_PACKAGE = "hlbd.migrations"
# The newest revision in migrations/versions, so that opening a store reads one row
# instead of importing Alembic and parsing every migration (about 70 ms a command);
# tests/test_store.py holds it equal to what Alembic finds. Alembic itself is imported
# only to create, upgrade or judge an unknown revision.
HEAD_REVISION = "0010"


def migrations_dir() -> Path:
    """The folder of hlbd's Alembic environment: migrations/ of a checkout, or its copy
    inside an installed hlbd."""
    return installed_folder(MIGRATIONS_PACKAGE, "env.py", "hlbd's migrations")


def _alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest schema revision this hlbd knows."""
    return HEAD_REVISION


def script_head() -> str:
    """The newest revision as Alembic reads it from the migration scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _stored_revision(conn) -> str | None:
    """What ``alembic_version`` holds (as Alembic's MigrationContext reads it), or None."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return _one_revision(
        conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all())


def _one_revision(revisions: list[str]) -> str | None:
    """The revision ``alembic_version`` holds, or None when it holds none."""
    if len(revisions) > 1:
        raise StoreError(f"the database has several schema revisions "
                         f"({', '.join(sorted(revisions))}); hlbd keeps one")
    return revisions[0] if revisions else None


def current_revision(engine: Engine, url: str | None = None) -> str | None:
    """The revision the database is at, or None for a database without our schema.

    A SQLite file with tables but no revision is someone else's database and is refused
    (never migrated into); ``url`` names the database in errors. On SQLite this reads
    outside any transaction: a reader of a WAL database never waits for a writer, so
    opening a store does not wait for another process's long write.
    """
    where = (sqlite_path(url) or url) if url else engine.url.render_as_string()
    try:
        if engine.dialect.name != "sqlite":
            with engine.connect() as conn:
                return _stored_revision(conn)
        revision, tables = _sqlite_schema(engine)
    except (exc.DatabaseError, sqlite3.DatabaseError) as error:
        original = getattr(error, "orig", None) or error
        reason = str(original).strip().splitlines()[0]
        path = sqlite_path(url) if url else None
        if path and not Path(path).parent.is_dir():
            raise StoreError(f"{where}: its folder {Path(path).parent} does not exist "
                             "(create it, or pass another --db)") from None
        raise StoreError(f"{where}: cannot be read as a database ({reason})") from None
    if revision is None and tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreError(f"{where}: not an hlbd run database (it has tables {shown} and "
                         "no hlbd schema revision); pass another --db")
    return revision


def _sqlite_schema(engine: Engine) -> tuple[str | None, list[str]]:
    """(revision, table names) of a SQLite database, read in autocommit mode."""
    connection = engine.raw_connection()  # the driver's own: no BEGIN IMMEDIATE
    try:
        cursor = connection.cursor()
        tables = sorted(row[0] for row in cursor.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite%'"))
        revisions = ([row[0] for row in cursor.execute(
            "SELECT version_num FROM alembic_version")]
            if "alembic_version" in tables else [])
        cursor.close()
    finally:
        connection.close()
    return _one_revision(revisions), tables


def _check_known(revision: str | None, url: str) -> None:
    if revision is None or revision == HEAD_REVISION:
        return
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(_alembic_config())
    try:
        known = script.get_revision(revision) is not None
    except CommandError:
        known = False
    if not known:
        raise SchemaTooNewError(
            f"database {url} is at schema revision {revision!r}, which this hlbd does not "
            f"know (newest known: {head_revision()!r}); it was written by a newer hlbd: "
            "upgrade hlbd to use it")


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """Serialise schema creation across processes (a file lock beside a SQLite file)."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


# The key of the advisory lock that serialises schema creation and upgrades on a
# server (advisory locks are per database; any constant both sides agree on will do).
SCHEMA_LOCK_KEY = 0x686C6264  # "hlbd"


def upgrade(engine: Engine, url: str) -> str:
    """Bring the database to the newest revision (creating it if empty); returns it."""
    if sqlite_path(url) is None:
        # One transaction: the lock, the revision read after it, and the migration.
        # PostgreSQL's DDL is transactional, so a process that waited on the lock
        # reads the finished schema, never half of it.
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": SCHEMA_LOCK_KEY})
            revision = _stored_revision(conn)
            _check_known(revision, url)
            if revision != head_revision():
                from alembic import command

                command.upgrade(_alembic_config(conn), "head")
        return head_revision()
    check_database_file(url, must_exist=False)
    path = sqlite_path(url)
    if path is not None and path.exists():
        current_revision(engine, url)  # refuses another application's database, lock-free
    with _creation_lock(url):
        revision = current_revision(engine, url)
        _check_known(revision, url)
        _use_wal(engine)
        if revision != head_revision():
            from alembic import command

            with engine.begin() as conn:
                command.upgrade(_alembic_config(conn), "head")
        return head_revision()


def older_than_head(url: str, revision: str) -> str:
    """What to do about a database at an older revision (the message for a user)."""
    return (f"database {url} is at schema revision {revision!r}, older than "
            f"{head_revision()!r}; run `hlbd db upgrade --db {url}` first")


def check_schema(engine: Engine, url: str) -> None:
    """For a reader: the database is hlbd's, at the newest revision (creates nothing)."""
    revision = current_revision(engine, url)
    if revision is None:
        raise NoDatabaseError(f"{sqlite_path(url) or url} is an empty database (no hlbd "
                              "schema yet); `hlbd train` or `hlbd db upgrade` sets it up")
    if revision != head_revision():
        _check_known(revision, url)
        raise StoreError(older_than_head(url, revision))


def _use_wal(engine: Engine) -> None:
    """Switch a SQLite file to WAL mode.

    The switch needs the file to itself for an instant, and SQLite does not wait for
    that (its busy handler is not called): another process reading the revision of the
    brand-new file at that instant made it fail with "database is locked". So wait here.
    """
    deadline = time.monotonic() + connect.BUSY_TIMEOUT_MS / 1000
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        while True:
            try:
                dbapi.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)


def ensure_schema(engine: Engine, url: str) -> None:
    """Create a new database at the newest revision; refuse a newer or older one."""
    revision = current_revision(engine, url)
    head = head_revision()
    if revision == head:
        return
    _check_known(revision, url)
    if revision is None:
        upgrade(engine, url)
        return
    raise StoreError(older_than_head(url, revision))
