"""The run store: the only code that writes the run database, one module per job.

``Store`` is the facade the trainer's recorder, the CLI and the explorer use: writers call
its ``record_*`` methods (each one short transaction, hlbd.store.writes); readers get
plain dicts (hlbd.store.reads). The rooms behind it:

- ``connect``: where the database is, engines that can or cannot write;
- ``schema``: Alembic revisions, creating, upgrading and checking a database;
- ``tables``: the tables as SQLAlchemy models;
- ``rows``: measured values into rows and back (NaN flags, step columns, rollups);
- ``claims``: who may write a run, heartbeats, whether a holder is alive;
- ``history``: the effective history (what a resume supersedes, where it starts);
- ``writes`` / ``reads``: the store's methods;
- ``buckets``: the explorer's downsampled step reads; ``query``: a user's read-only SQL;
  ``copy``: runs from one store to another.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from hlbd.store import connect, schema
from hlbd.store.claims import HEARTBEAT_SECONDS, STALE_AFTER, Claims, holder_state, live_status
from hlbd.store.history import superseded
from hlbd.store.reads import Reads
from hlbd.store.rows import (
    NAN_FLAGGED,
    ROLLUP_STEPS,
    STEP_COLUMNS,
    STEP_SERIES,
    join_nan,
    rollup_rows,
    split_nan,
    step_columns,
    utcnow,
)
from hlbd.store.tables import Run
from hlbd.store.writes import Writes

__all__ = ["HEARTBEAT_SECONDS", "NAN_FLAGGED", "ROLLUP_STEPS", "STALE_AFTER", "STEP_COLUMNS",
           "STEP_SERIES", "Store", "holder_state", "join_nan", "live_status", "rollup_rows",
           "split_nan", "step_columns", "superseded", "utcnow"]


class Store(Writes, Reads):
    """Reads and writes runs, segments, epochs, steps, checkpoints and anomalies."""

    def __init__(self, url: str, engine: Engine):
        self.url = url
        self.engine = engine
        self._claims = Claims()
        # A datetime as SQLAlchemy stores it in this database (for the driver-level path).
        self._time_to_db: Callable[[datetime], Any] = (
            Run.heartbeat_at.type.bind_processor(engine.dialect) or (lambda at: at))

    @classmethod
    def open(cls, db: str | None = None) -> Store:
        """Open (and on first use create) the database that ``db``/``HLBD_DB`` names."""
        url = connect.resolve_db_url(db)
        connect.check_database_file(url, must_exist=False)
        engine = connect.write_engine(url)
        schema.ensure_schema(engine, url)
        return cls(url, engine)

    @classmethod
    def open_read_only(cls, db: str | None = None) -> Store:
        """Open an existing database for reading; creates nothing (no file, no lock).

        Raises NoDatabaseError where there is none, StoreError for a file that is not
        an hlbd database; only the read methods work on the store returned.
        """
        url = connect.resolve_db_url(db)
        engine = connect.read_engine(url)
        schema.check_schema(engine, url)
        return cls(url, engine)

    def close(self) -> None:
        self.engine.dispose()
