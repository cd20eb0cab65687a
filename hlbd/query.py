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
    """Run ``sql`` read-only against the database ``db`` (URL/path or read engine).

    Raises QueryError for a refused write or invalid SQL, QueryInterrupted when the
    statement runs past ``time_limit`` seconds (fetching the rows included).
    """
    if not sql or not sql.strip():
        raise QueryError("no SQL given: pass one statement, e.g. SELECT * FROM runs")
    if not time_limit > 0:
        raise QueryError(f"the time limit must be a positive number of seconds, "
                         f"not {time_limit}")
    if isinstance(db, Engine):
        return _run(db, sql, time_limit, max_rows)
    engine = database.read_engine(database.resolve_db_url(db))
    try:
        return _run(engine, sql, time_limit, max_rows)
    finally:
        engine.dispose()  # ours alone: do not leave its file handle to the collector


def _run(engine: Engine, sql: str, time_limit: float, max_rows: int | None) -> QueryResult:
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
            raise _query_error(error, time_limit) from None
        finally:
            if is_sqlite:
                dbapi.set_progress_handler(None, 0)
            conn.rollback()
    truncated = bool(max_rows) and len(rows) > max_rows
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows or None]], truncated)


# SQLite result codes: the statement was stopped, wrote to a read-only database, or
# was denied by the authorizer (ATTACH, a pragma that sets, VACUUM).
SQLITE_INTERRUPT, SQLITE_READONLY, SQLITE_AUTH = 9, 8, 23


def _query_error(error: exc.DBAPIError, time_limit: float) -> QueryError:
    message = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
    code = getattr(error.orig, "sqlite_errorcode", None)
    lowered = message.lower()
    if code == SQLITE_INTERRUPT or "statement timeout" in lowered:
        return QueryInterrupted(f"query stopped: it ran past the {time_limit:g} s time limit")
    if code in (SQLITE_READONLY, SQLITE_AUTH) or lowered.startswith("not authorized") or (
            "read-only transaction" in lowered):
        return QueryError(f"refused: the database is open read-only here; only statements "
                          f"that read can run ({message})")
    return QueryError(f"query failed: {message}")
