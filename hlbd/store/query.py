"""Ad-hoc SQL from a user: read-only, enforced by the connection, under a time limit.

Nothing here parses the SQL to decide what is allowed: the connection is opened
read-only (SQLite ``mode=ro`` + ``PRAGMA query_only``; a READ ONLY transaction on a
server), so any write fails in the database itself. A SQLite progress handler stops
a query that runs past its time limit (as datasette's ``sqlite_timelimit`` does).

Memory is bounded too, so one query cannot take the machine (or the explorer) down.
On SQLite, within ``memory_limit`` bytes: no single value may be larger than a quarter
of it (``SQLITE_LIMIT_LENGTH`` on the connection, for the statement), SQLite's heap
stays under it (``PRAGMA hard_heap_limit``: process-wide, and only ever lowered, so it
also bounds the other SQLite connections of the process running the query: the
explorer's reads use a few MB), and the rows fetched stay under it.

On PostgreSQL the statement becomes a server-side cursor, ``DECLARE ... CURSOR FOR
<statement>``, sent through the extended query protocol: the server accepts one
statement only (a ``;`` cannot start a second one, ``COMMIT`` included) and only a query
after ``FOR`` (COPY, SET, VACUUM, ANALYZE, LOCK, DO, CALL are syntax errors there), all
inside a READ ONLY transaction under ``statement_timeout``; rows are fetched up to the
row cap and the memory limit, so an endless query is never read to its end. The session
is closed after the query, so nothing it set (a setting, an advisory lock) outlives it.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain

from sqlalchemy import Engine, exc

from hlbd.errors import QueryError, QueryInterrupted, QueryTooLarge
from hlbd.store import connect

DEFAULT_TIME_LIMIT = 5.0
DEFAULT_MEMORY_LIMIT = 512 * 2**20
FETCH_BATCH = 1000


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool = False


def run_query(db: str | Engine, sql: str, *, time_limit: float = DEFAULT_TIME_LIMIT,
              max_rows: int | None = None,
              memory_limit: int = DEFAULT_MEMORY_LIMIT) -> QueryResult:
    """Run ``sql`` read-only against the database ``db`` (URL/path or read engine).

    Raises QueryError for a refused write or invalid SQL, QueryInterrupted when the
    statement runs past ``time_limit`` seconds (fetching the rows included),
    QueryTooLarge when it needs more than ``memory_limit`` bytes (see the module).
    """
    if not sql or not sql.strip():
        raise QueryError("no SQL given: pass one statement, e.g. SELECT * FROM runs")
    if not time_limit > 0:
        raise QueryError(f"the time limit must be a positive number of seconds, "
                         f"not {time_limit}")
    if not memory_limit >= 2**20:
        raise QueryError(f"the memory limit must be at least 1 MB, not {memory_limit} bytes")
    if isinstance(db, Engine):
        return _run(db, sql, time_limit, max_rows, memory_limit)
    engine = connect.read_engine(connect.resolve_db_url(db))
    try:
        return _run(engine, sql, time_limit, max_rows, memory_limit)
    finally:
        engine.dispose()  # ours alone: do not leave its file handle to the collector


def _run(engine: Engine, sql: str, time_limit: float, max_rows: int | None,
         memory_limit: int) -> QueryResult:
    if engine.dialect.name == "postgresql":
        return _run_on_server(engine, sql, time_limit, max_rows, memory_limit)
    deadline = time.monotonic() + time_limit
    value_limit = memory_limit // 4
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        is_sqlite = conn.dialect.name == "sqlite"
        if is_sqlite:
            limit_sqlite_heap(memory_limit)
            # Called every N VM instructions; a non-zero return aborts the statement.
            dbapi.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            usual_length = dbapi.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, value_limit)
        else:
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(time_limit * 1000)}")
        try:
            result = conn.exec_driver_sql(sql)
            if not result.returns_rows:
                return QueryResult([], [])
            columns = list(result.keys())
            rows = _fetch(result, max_rows, memory_limit)
        except exc.DBAPIError as error:
            raise _query_error(error, time_limit, value_limit) from None
        except MemoryError:  # SQLite's heap limit (SQLITE_NOMEM) or Python's own
            raise QueryTooLarge(f"query stopped: it needed more than the "
                                f"{_mb(memory_limit)} memory limit; add a LIMIT, select "
                                "fewer or smaller values") from None
        finally:
            if is_sqlite:
                dbapi.set_progress_handler(None, 0)
                dbapi.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, usual_length)
            conn.rollback()
    truncated = bool(max_rows) and len(rows) > max_rows
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows or None]], truncated)


def _fetch(result, max_rows: int | None, memory_limit: int,
           before_batch: Callable[[], None] | None = None) -> list:
    """The rows (``max_rows`` + 1 at most), stopped once they would pass the limit;
    ``before_batch`` runs before each fetch (a server cursor's time limit)."""
    rows, size = [], 0
    wanted = max_rows + 1 if max_rows else None
    while wanted is None or len(rows) < wanted:
        if before_batch is not None:
            before_batch()
        batch = result.fetchmany(FETCH_BATCH if wanted is None
                                 else min(FETCH_BATCH, wanted - len(rows)))
        if not batch:
            break
        size += _size(batch)
        if size > memory_limit:
            raise QueryTooLarge(f"query stopped: its rows passed the {_mb(memory_limit)} "
                                f"memory limit after {len(rows) + len(batch):,} rows; add a "
                                "LIMIT, select fewer columns, or use --max-rows")
        rows += batch
    return rows


def _size(batch: list) -> int:
    """About what ``batch`` holds in Python: text and blobs by their length, any other
    value as a pointer and a number, each row as a tuple (a loop kept cheap: it runs
    over every value fetched)."""
    text = 0
    for value in chain.from_iterable(batch):
        if value.__class__ is str or value.__class__ is bytes:
            text += len(value)
    return text + len(batch) * (64 + 16 * len(batch[0]))


def limit_sqlite_heap(limit: int) -> None:
    """Lower SQLite's hard heap limit for this process to ``limit`` bytes (never raises
    it: a limit set lower before stays)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"PRAGMA hard_heap_limit = {int(limit)}")
    finally:
        conn.close()


def _mb(size: int) -> str:
    return f"{size / 2**20:g} MB"


# SQLite result codes: the statement was stopped, wrote to a read-only database, was
# denied by the authorizer (ATTACH, a pragma that sets, VACUUM), or made a value
# larger than SQLITE_LIMIT_LENGTH.
SQLITE_INTERRUPT, SQLITE_READONLY, SQLITE_AUTH, SQLITE_TOOBIG = 9, 8, 23, 18


def _query_error(error: exc.DBAPIError, time_limit: float, value_limit: int) -> QueryError:
    message = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
    code = getattr(error.orig, "sqlite_errorcode", None)
    lowered = message.lower()
    if code == SQLITE_INTERRUPT or "statement timeout" in lowered:
        return QueryInterrupted(f"query stopped: it ran past the {time_limit:g} s time limit")
    if code == SQLITE_TOOBIG:
        return QueryTooLarge(f"query stopped: a value would be larger than "
                             f"{_mb(value_limit)} (a quarter of the memory limit) ({message})")
    if code in (SQLITE_READONLY, SQLITE_AUTH) or lowered.startswith("not authorized") or (
            "read-only transaction" in lowered):
        return QueryError(f"refused: the database is open read-only here; only statements "
                          f"that read can run ({message})")
    return QueryError(f"query failed: {message}")


CURSOR_NAME = "hlbd_user_sql"
# The statements DECLARE accepts after FOR: what `hlbd sql` can run on PostgreSQL.
QUERY_WORDS = ("SELECT", "WITH", "VALUES", "TABLE", "(")


def _run_on_server(engine: Engine, sql: str, time_limit: float, max_rows: int | None,
                   memory_limit: int) -> QueryResult:
    import psycopg

    deadline = time.monotonic() + time_limit

    def set_timeout(conn) -> None:
        left = int((deadline - time.monotonic()) * 1000)
        if left <= 0:
            raise QueryInterrupted(f"query stopped: it ran past the {time_limit:g} s "
                                   "time limit")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {left}")

    with engine.connect() as conn:  # the engine's transactions are READ ONLY
        try:
            if conn.exec_driver_sql("SELECT current_setting('is_superuser')").scalar() == "on":
                user = conn.exec_driver_sql("SELECT current_user").scalar()
                raise QueryError(
                    f"refused: role {user!r} is a PostgreSQL superuser, which can act "
                    "outside a read-only transaction (run programs, signal other "
                    "sessions); give `hlbd sql` a role that can only read (README: "
                    "\"A SELECT-only role\")")
            set_timeout(conn)
            cursor = conn.connection.dbapi_connection.cursor(name=CURSOR_NAME)
            try:
                cursor.execute(sql)  # DECLARE ... FOR sql, through the extended protocol
                columns = [d.name for d in cursor.description]
                # Each FETCH is a statement of its own, timed from the time left.
                rows = _fetch(cursor, max_rows, memory_limit, lambda: set_timeout(conn))
            finally:
                cursor.close()
        except psycopg.Error as error:
            raise _server_error(error, sql, time_limit) from None
        except exc.DBAPIError as error:
            raise _server_error(error.orig, sql, time_limit) from None
        finally:
            conn.invalidate()  # closes the session: a fresh one for the next query
    truncated = bool(max_rows) and len(rows) > max_rows
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows or None]], truncated)


# PostgreSQL SQLSTATEs: the statement was cancelled (statement_timeout), tried to
# write in a read-only transaction, lacked a privilege, or did not parse.
PG_QUERY_CANCELED, PG_READ_ONLY, PG_NO_PRIVILEGE, PG_SYNTAX = "57014", "25006", "42501", "42601"


def _server_error(error, sql: str, time_limit: float) -> QueryError:
    message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    state = getattr(error, "sqlstate", None)
    if state == PG_QUERY_CANCELED:
        return QueryInterrupted(f"query stopped: it ran past the {time_limit:g} s time limit")
    if state in (PG_READ_ONLY, PG_NO_PRIVILEGE):
        return QueryError(f"refused: the database is open read-only here; only statements "
                          f"that read can run ({message})")
    if state == PG_SYNTAX and "multiple commands" in message:
        return QueryError(f"refused: one statement per call ({message})")
    word = re.match(r"\s*(\w+|\()", sql)
    first = word.group(1).upper() if word else ""
    if state == PG_SYNTAX and first not in QUERY_WORDS and f'"{first}"' in message.upper():
        return QueryError(f"refused: the database is open read-only here and runs one "
                          f"query (SELECT, WITH, VALUES or TABLE), not {first} ({message})")
    return QueryError(f"query failed: {message}")
