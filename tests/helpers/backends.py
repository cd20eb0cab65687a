"""The databases the tests run against (SQLite files and, when a server is given,
PostgreSQL), and reading them back read-only.

``HLBD_TEST_PG`` names a PostgreSQL server: a SQLAlchemy URL
(``postgresql+psycopg://role@/postgres?host=/socket/dir``) whose role may CREATE
DATABASE; ``eval "$(.ci/pg-server start)"`` starts a throwaway one and sets it. Each
test gets a database of its own, copied from a template at the newest schema
(``CREATE DATABASE ... TEMPLATE``) and dropped after the test. Without ``HLBD_TEST_PG``
the PostgreSQL half of the suite is deselected, with one line saying why; with
``HLBD_TEST_PG_REQUIRED=1`` (``.ci/run`` sets it) a missing server or driver fails the
tests instead.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from hlbd.store import Store, connect

BACKENDS = ("sqlite", "postgresql")
READER_ROLE = "hlbd_reader"  # .ci/pg-server creates it: LOGIN, no rights of its own
TABLES = ("runs", "segments", "epochs", "steps", "points", "checkpoints", "anomalies",
          "alembic_version")

# For a test about SQLite files (their bytes, WAL, mode=ro): run it on SQLite only.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
# For a test about the server (roles, sessions, many machines): PostgreSQL only.
postgres_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def pg_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    if not os.environ.get("HLBD_TEST_PG"):
        return ("no PostgreSQL server: set HLBD_TEST_PG to a postgresql+psycopg:// URL "
                "(eval \"$(.ci/pg-server start)\" starts a throwaway one)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -e '.[postgres]'"
    return None


def pg_required() -> bool:
    return os.environ.get("HLBD_TEST_PG_REQUIRED", "") not in ("", "0")


class PgServer:
    """Creates and drops the tests' databases on the server HLBD_TEST_PG names."""

    def __init__(self, url: str):
        self.url = make_url(url)
        self.admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self.prefix = f"hlbd_test_{os.getpid()}_"
        self.names = itertools.count()
        self._head: str | None = None
        self.made: set[str] = set()
        with self.admin.connect() as conn:  # what was left by a killed run of this pid
            for (name,) in conn.execute(text(
                    "SELECT datname FROM pg_database WHERE datname LIKE :p"),
                    {"p": self.prefix + "%"}):
                conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))

    def url_of(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def name_of(self, url: str) -> str:
        return make_url(url).database

    def _create(self, template: str) -> str:
        name = f"{self.prefix}{next(self.names)}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}" '
                              "STRATEGY FILE_COPY"))
        self.made.add(name)
        return self.url_of(name)

    def empty(self) -> str:
        """A database without any table (what a team's new database looks like)."""
        return self._create("template0")

    def new(self) -> str:
        """A database at the newest schema, without runs."""
        if self._head is None:
            url = self.empty()
            Store.open(url).close()
            self._head = self.name_of(url)
        return self._create(self._head)

    def copy(self, url: str) -> str:
        """A copy of the database ``url`` (nobody may be connected to it)."""
        return self._create(self.name_of(url))

    def drop(self, url: str) -> None:
        name = self.name_of(url)
        for attempt in range(50):
            try:
                with self.admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except DBAPIError as exc:
                # FORCE may not end an autovacuum worker (not our role): it ends soon.
                if "must be a member of the role" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)
        self.made.discard(name)

    def reader_url(self, url: str) -> str:
        """``url`` as the SELECT-only role, granted what the README's recipe grants."""
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:
            conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER_ROLE}"))
        engine.dispose()
        return make_url(url).set(username=READER_ROLE).render_as_string(hide_password=False)

    def close(self) -> None:
        """Drop every database this session made (the template too)."""
        for name in sorted(self.made):
            self.drop(self.url_of(name))
        self.admin.dispose()


class Databases:
    """New and copied databases of one backend: SQLite files or PostgreSQL databases."""

    def __init__(self, backend: str, server):
        self.backend = backend
        self._server = server

    @property
    def server(self) -> PgServer:
        return self._server()

    def new(self, folder: Path) -> str:
        """A new database's --db value: a file path (created on first open) or a URL."""
        if self.backend == "sqlite":
            Path(folder).mkdir(parents=True, exist_ok=True)
            return str(Path(folder) / "runs.db")
        return self.server.new()

    def copy(self, db: str, folder: Path) -> str:
        """A copy of ``db`` (closed: no store may hold it open) for one test."""
        if self.backend == "sqlite":
            target = Path(folder) / "runs.db"
            shutil.copy(db, target)
            return str(target)
        return self.server.copy(db)

    def drop(self, db: str) -> None:
        if self.backend != "sqlite":
            self.server.drop(db)


def is_sqlite(db: str | Path) -> bool:
    return connect.sqlite_path(connect.resolve_db_url(str(db))) is not None


def rows(db: str | Path, sql: str, **params) -> list[tuple]:
    """Rows of ``sql`` (``:name`` parameters) read from ``db`` through a read-only engine."""
    engine = connect.read_engine(connect.resolve_db_url(str(db)))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def dump(db: str | Path) -> dict[str, list]:
    """Every row of every table, read-only: equal dumps mean an untouched store."""
    return {t: sorted(map(repr, rows(db, f"SELECT * FROM {t}"))) for t in TABLES}


def db_snapshot(db: str | Path) -> dict:
    """What a refused write must not change. SQLite: database and WAL bytes, every
    table's row count, and the files beside the database. PostgreSQL: every relation,
    every table's row count and a checksum of its rows, and the large objects."""
    if is_sqlite(db):
        return _sqlite_snapshot(Path(db))
    engine = create_engine(str(db), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            relations = [r[0] for r in conn.execute(text(
                "SELECT c.relname::text || ':' || c.relkind::text FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
                "ORDER BY 1"))]
            tables = [r[0] for r in conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"))]
            counts, sums = {}, {}
            for t in tables:
                counts[t], sums[t] = conn.execute(text(
                    f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' "
                    f'ORDER BY t::text), \'\')) FROM "{t}" t')).one()
            large_objects = conn.execute(text(
                "SELECT count(*) FROM pg_largeobject_metadata")).scalar()
    finally:
        engine.dispose()
    return {"relations": relations, "counts": counts, "checksums": sums,
            "large_objects": large_objects}


def _sqlite_snapshot(path: Path) -> dict:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                  for t in tables}
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    return {"db_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "wal_sha256": hashlib.sha256(wal.read_bytes()).hexdigest() if wal.exists()
            else None,
            "counts": counts, "files": sorted(p.name for p in path.parent.iterdir())}


def sqlite_at(path: Path, revision: str) -> str:
    """A new SQLite file at ``path`` with the schema of an older ``revision`` (for the
    migration tests); returns its URL."""
    from alembic import command

    from hlbd.store import schema

    url = connect.resolve_db_url(str(path))
    engine = connect.write_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(schema._alembic_config(conn), revision)
    finally:
        engine.dispose()
    return url
