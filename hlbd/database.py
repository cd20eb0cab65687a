"""Where the run database is, how to connect to it, and keeping its schema current.

One setting names the database for every command and the explorer: ``--db``, else the
``HLBD_DB`` environment variable, else ``hlbd.db`` in the working directory. It is a
SQLAlchemy URL or a plain file path (SQLite).

SQLite is opened in WAL mode with a busy timeout so several processes can write one
file; writes take the lock up front (``BEGIN IMMEDIATE``) so a transaction never has to
upgrade a read lock into a write lock, which a busy timeout cannot rescue.

PostgreSQL (``postgresql+psycopg://...``) holds the same schema. Creating or upgrading
it happens under a transaction-scoped advisory lock, so processes on several machines
opening one new database at once create it once. A NaN bound as a parameter is sent as
NULL, as SQLite stores it, so the ``*_is_nan`` flags mean the same on both.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, exc, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import QueuePool

from hlbd.errors import NoDatabaseError, SchemaTooNewError, StoreError
from hlbd.fileio import installed_folder

DEFAULT_DB_FILE = "hlbd.db"
BUSY_TIMEOUT_MS = 30_000
# The Alembic environment: the top-level migrations/ folder of a checkout, shipped inside
# the package as hlbd.migrations (pyproject's package-dir), so an installed hlbd has it.
MIGRATIONS_PACKAGE = "hlbd.migrations"
# The newest revision in migrations/versions, so that opening a store reads one row
# instead of importing Alembic and parsing every migration (about 70 ms a command);
# tests/test_store.py holds it equal to what Alembic finds. Alembic itself is imported
# only to create, upgrade or judge an unknown revision.
HEAD_REVISION = "0006"


def resolve_db_url(db: str | None = None) -> str:
    """The database URL from a flag value, else ``HLBD_DB``, else ``./hlbd.db``."""
    value = db or os.environ.get("HLBD_DB") or DEFAULT_DB_FILE
    if "://" in value:
        return value
    # URL.create quotes what a URL would read as syntax ('?', '#', '%'), so the URL names
    # exactly this file: 'we#ird?x=1 .db' is not 'we' with a query string.
    path = str(Path(value).expanduser().resolve())
    return URL.create("sqlite", database=path).render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


SQLITE_HEADER = b"SQLite format 3\x00"


def check_database_file(url: str, *, must_exist: bool) -> None:
    """Refuse, touching nothing, a ``--db`` path that is not a SQLite database file.

    A folder, or a file with content but no SQLite header (a JSON file, zeros, random
    bytes) is refused; a missing file is refused when ``must_exist`` (read commands
    never create one). An empty file is an empty database.
    """
    path = sqlite_path(url)
    if path is None:
        return
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not a database file; pass a file path "
                         "with --db")
    if path.exists() and not path.is_file():
        raise StoreError(f"{path}: not a regular file (a device, pipe or socket); pass a "
                         "database file with --db")
    if not path.exists():
        if must_exist:
            raise NoDatabaseError(f"no database at {path}; `hlbd train` creates it (or "
                                  "pass --db, or set HLBD_DB, to read another)")
        return
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as error:
        raise StoreError(f"{path}: cannot read the database file: "
                         f"{error.strerror or error}") from None
    if header and header != SQLITE_HEADER:
        raise StoreError(f"{path}: not a SQLite database (no SQLite header; it was left "
                         "untouched); pass the run database with --db")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Driver autocommit: SQLAlchemy's "begin" event below issues BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _begin_immediate(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _nan_as_null_dumpers():
    """psycopg dumpers that send a float NaN as NULL, as SQLite stores it."""
    from psycopg.types.numeric import FloatBinaryDumper, FloatDumper

    class NanAsNull(FloatDumper):
        def dump(self, obj):
            return None if math.isnan(obj) else super().dump(obj)

    class NanAsNullBinary(FloatBinaryDumper):
        def dump(self, obj):
            return None if math.isnan(obj) else super().dump(obj)

    return NanAsNull, NanAsNullBinary


def _server_engine(url: str) -> Engine:
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except ImportError as exc:
        raise StoreError(f"{url}: its database driver is not installed ({exc}); for "
                         "PostgreSQL: pip install -e '.[postgres]'") from None
    if engine.dialect.driver == "psycopg":
        dumpers = _nan_as_null_dumpers()

        @event.listens_for(engine, "connect")
        def _session(dbapi_connection, _record) -> None:
            for dumper in dumpers:
                dbapi_connection.adapters.register_dumper(float, dumper)
            # SQLite's busy timeout, on a server: a write waits for a lock at most this
            # long, and a session stuck inside a transaction (a process stopped mid-write)
            # is ended by the server, so it cannot block a run's writers forever.
            autocommit, dbapi_connection.autocommit = dbapi_connection.autocommit, True
            dbapi_connection.execute(f"SET lock_timeout = {BUSY_TIMEOUT_MS}")
            dbapi_connection.execute(
                f"SET idle_in_transaction_session_timeout = {2 * BUSY_TIMEOUT_MS}")
            dbapi_connection.autocommit = autocommit

    return engine


def write_engine(url: str) -> Engine:
    """An engine for writing: on SQLite every transaction takes the write lock up front."""
    if sqlite_path(url) is None:
        return _server_engine(url)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _begin_immediate)
    return engine


# Pragmas that take an argument yet only read (table_info(runs), ...).
READ_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check"}
# Pragmas that act even without an argument (they would fail on a read-only file
# anyway, but with "disk I/O error" rather than a refusal).
ACTING_PRAGMAS = {"wal_checkpoint", "optimize", "incremental_vacuum"}
# load_extension runs native code; fts3_tokenizer hands out (and takes) raw pointers.
DENIED_FUNCTIONS = {"load_extension", "fts3_tokenizer"}


def _read_only_authorizer(action, arg1, arg2, _db, _trigger):
    """SQLite's authorizer: the engine asks it before every operation it compiles."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY  # mode=ro does not stop ATTACH creating a new file
    if action == sqlite3.SQLITE_PRAGMA and (
            (arg2 is not None and arg1 not in READ_PRAGMAS) or arg1 in ACTING_PRAGMAS):
        return sqlite3.SQLITE_DENY  # setting a pragma (journal_mode=..., query_only=0)
    if action == sqlite3.SQLITE_FUNCTION and arg2 in DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _connect_read_only(path: Path) -> sqlite3.Connection:
    # Percent-encoded: in a URI a '#' or '?' in the path would otherwise end the file
    # name and drop mode=ro, opening (or creating) some other file read-write.
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    conn.isolation_level = None
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = ON")
    conn.set_authorizer(_read_only_authorizer)
    return conn


def read_engine(url: str) -> Engine:
    """An engine whose connections cannot write.

    SQLite: the file is opened ``mode=ro`` (so ATTACH cannot create files either) with
    ``PRAGMA query_only``; other databases: every transaction is READ ONLY.
    """
    path = sqlite_path(url)
    if path is None:
        engine = _server_engine(url)

        @event.listens_for(engine, "begin")
        def _read_only(conn) -> None:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")

        return engine
    check_database_file(url, must_exist=True)
    return create_engine("sqlite://", creator=lambda: _connect_read_only(path),
                         poolclass=QueuePool)


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


def check_schema(engine: Engine, url: str) -> None:
    """For a reader: the database is hlbd's, at the newest revision (creates nothing)."""
    revision = current_revision(engine, url)
    if revision is None:
        raise NoDatabaseError(f"{sqlite_path(url) or url} is an empty database (no hlbd "
                              "schema yet); `hlbd train` or `hlbd db upgrade` sets it up")
    if revision != head_revision():
        _check_known(revision, url)
        raise StoreError(f"database {url} is at schema revision {revision!r}, older than "
                         f"{head_revision()!r}; run `hlbd db upgrade --db {url}` first")


def _use_wal(engine: Engine) -> None:
    """Switch a SQLite file to WAL mode.

    The switch needs the file to itself for an instant, and SQLite does not wait for
    that (its busy handler is not called): another process reading the revision of the
    brand-new file at that instant made it fail with "database is locked". So wait here.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
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
    raise StoreError(f"database {url} is at schema revision {revision!r}, older than "
                     f"{head!r}; run `hlbd db upgrade --db {url}` first")
