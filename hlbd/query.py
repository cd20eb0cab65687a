"""Ad-hoc SQL from a user: read-only, enforced by the connection, under a time limit.

Nothing here parses the SQL to decide what is allowed: the connection is opened
read-only (SQLite ``mode=ro`` + ``PRAGMA query_only``; a READ ONLY transaction on a
server), so any write fails in the database itself. A SQLite progress handler stops
a query that runs past its time limit (as datasette's ``sqlite_timelimit`` does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, exc

from hlbd import database
from hlbd.errors import QueryError, QueryInterrupted

DEFAULT_TIME_LIMIT = 5.0


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool = False


def run_query(db: str | Engine, sql: str, *, time_limit: float = DEFAULT_TIME_LIMIT,
              max_rows: int | None = None) -> QueryResult:
    """Run ``sql`` read-only against the database ``db`` (URL/path or read engine)."""
    engine = db if isinstance(db, Engine) else database.read_engine(database.resolve_db_url(db))
    deadline = time.monotonic() + time_limit
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        is_sqlite = conn.dialect.name == "sqlite"
        if is_sqlite:
            # Called every N VM instructions; a non-zero return aborts the statement.
            dbapi.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        else:
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(time_limit * 1000)}")
        try:
            result = conn.exec_driver_sql(sql)
            if not result.returns_rows:
                return QueryResult([], [])
            columns = list(result.keys())
            rows = result.fetchmany(max_rows + 1) if max_rows else result.fetchall()
        except exc.DBAPIError as error:
            raise _query_error(error, time_limit, deadline) from None
        finally:
            if is_sqlite:
                dbapi.set_progress_handler(None, 0)
            conn.rollback()
    truncated = bool(max_rows) and len(rows) > max_rows
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows or None]], truncated)


def _query_error(error: exc.DBAPIError, time_limit: float, deadline: float) -> QueryError:
    message = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
    if "interrupted" in message.lower() or "statement timeout" in message.lower() or (
            time.monotonic() > deadline):
        return QueryInterrupted(f"query stopped: it ran past the {time_limit:g} s time limit")
    lowered = message.lower()
    if "readonly" in lowered or "read-only" in lowered or "query_only" in lowered or (
            "read only" in lowered) or "not authorized" in lowered:
        return QueryError(f"refused: the SQL box is read-only ({message})")
    return QueryError(f"query failed: {message}")
