"""Where the run database is and how to connect to it.

One setting names the database for every command and the explorer: ``--db``, else the
``HLBD_DB`` environment variable, else ``hlbd.db`` in the working directory. It is a
SQLAlchemy URL or a plain file path (SQLite).

SQLite is opened in WAL mode with a busy timeout so several processes can write one
file; writes take the lock up front (``BEGIN IMMEDIATE``) so a transaction never has to
upgrade a read lock into a write lock, which a busy timeout cannot rescue. A read engine
cannot write (``mode=ro``, ``query_only`` and an authorizer on SQLite; READ ONLY
transactions on a server).

PostgreSQL (``postgresql+psycopg://...``) holds the same schema. A NaN bound as a
parameter is sent as NULL, as SQLite stores it, so the ``*_is_nan`` flags mean the same
on both.
"""

from __future__ import annotations

import math
import os
import sqlite3
import urllib.parse
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import QueuePool

from hlbd.errors import NoDatabaseError, StoreError

DEFAULT_DB_FILE = "hlbd.db"
BUSY_TIMEOUT_MS = 30_000


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
