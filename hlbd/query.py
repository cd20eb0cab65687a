"""Ad-hoc SQL from a user: read-only, enforced by the connection, under a time limit.

Nothing here parses the SQL to decide what is allowed: the connection is opened
read-only (SQLite ``mode=ro`` + ``PRAGMA query_only``; a READ ONLY transaction on a
server), so any write fails in the database itself. A SQLite progress handler stops
a query that runs past its time limit (as datasette's ``sqlite_timelimit`` does).

On PostgreSQL the statement becomes a server-side cursor, ``DECLARE ... CURSOR FOR
<statement>``, sent through the extended query protocol: the server accepts one
statement only (a ``;`` cannot start a second one, ``COMMIT`` included) and only a query
after ``FOR`` (COPY, SET, VACUUM, ANALYZE, LOCK, DO, CALL are syntax errors there), all
inside a READ ONLY transaction under ``statement_timeout``; rows are fetched up to the
row cap, so an endless query is never read to its end. The session is closed after the
query, so nothing it set (a setting, an advisory lock) outlives it.
"""

from __future__ import annotations

import re
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
    if engine.dialect.name == "postgresql":
        return _run_on_server(engine, sql, time_limit, max_rows)
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


CURSOR_NAME = "hlbd_user_sql"
# The statements DECLARE accepts after FOR: what `hlbd sql` can run on PostgreSQL.
QUERY_WORDS = ("SELECT", "WITH", "VALUES", "TABLE", "(")


def _run_on_server(engine: Engine, sql: str, time_limit: float,
                   max_rows: int | None) -> QueryResult:
    import psycopg

    deadline = time.monotonic() + time_limit

    def set_timeout(conn) -> None:
        left = max(1, int((deadline - time.monotonic()) * 1000))
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
                set_timeout(conn)
                rows = cursor.fetchmany(max_rows + 1) if max_rows else cursor.fetchall()
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
