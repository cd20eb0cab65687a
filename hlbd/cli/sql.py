"""``hlbd sql``: ad-hoc read-only SQL over the run database."""

from __future__ import annotations

import base64
import csv
import io
import json
import sys
from decimal import Decimal

import click

from hlbd.cli.options import db_option, table
from hlbd.errors import QueryError
from hlbd.store.query import DEFAULT_MEMORY_LIMIT, DEFAULT_TIME_LIMIT, QueryResult, run_query


def _json_value(value):
    if isinstance(value, Decimal):  # PostgreSQL's numeric (sum of integers, ...)
        return int(value) if value == value.to_integral_value() else float(value)
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value


def as_json(result: QueryResult) -> str:
    """A list of objects, one per row; Infinity as the literal Python's json writes."""
    duplicates = sorted({c for c in result.columns if result.columns.count(c) > 1})
    if duplicates:
        raise QueryError(f"--json needs distinct column names; {', '.join(duplicates)} "
                         "appears more than once: name them with AS")
    rows = [{c: _json_value(v) for c, v in zip(result.columns, row)} for row in result.rows]
    return json.dumps(rows, ensure_ascii=False, indent=2, default=str)


def as_csv(result: QueryResult) -> str:
    """A header row and the rows; NULL is an empty cell, floats at full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows(["" if v is None else v for v in row] for row in result.rows)
    return out.getvalue()


@click.command()
@click.argument("query")
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row (NULL: empty).")
@click.option("--json", "fmt", flag_value="json", help="A JSON list of objects (NULL: null).")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_TIME_LIMIT, show_default=True,
              help="Stop the query after this many seconds.")
@click.option("--memory-limit", type=click.IntRange(min=1),
              default=DEFAULT_MEMORY_LIMIT // 2**20, show_default=True,
              help="Stop the query if it needs more than this many MB (its rows, SQLite's "
                   "memory, or one value larger than a quarter of it).")
@click.option("--max-rows", type=click.IntRange(min=1), default=None,
              help="Print at most this many rows (a note on stderr says when there were "
                   "more) [default: all].")
@db_option
def sql(query: str, fmt: str | None, time_limit: float, memory_limit: int,
        max_rows: int | None, db: str | None) -> None:
    """Run one read-only SQL statement and print its rows (a table, --csv or --json).

    The database is opened read-only: INSERT, UPDATE, DELETE, CREATE, DROP, ATTACH,
    pragmas that set and load_extension are refused by the connection itself. QUERY
    "-" reads the statement from stdin. The schema and example queries are in the
    README ("The run database").

    Example: hlbd sql "SELECT run_id, min(loss) FROM epoch_metrics GROUP BY run_id"
    """
    if query == "-":
        query = sys.stdin.read()
    result = run_query(db, query, time_limit=time_limit, max_rows=max_rows,
                       memory_limit=memory_limit * 2**20)
    if fmt == "json":
        click.echo(as_json(result))
    elif fmt == "csv":
        click.echo(as_csv(result), nl=False)
    elif not result.columns:
        click.echo("(the statement returned no rows)", err=True)
    else:
        click.echo(table(result.columns, result.rows))
        click.echo(f"({len(result.rows)} row{'s' if len(result.rows) != 1 else ''})",
                   err=True)
    if result.truncated:
        click.echo(f"(stopped at --max-rows {max_rows}; the query has more rows)", err=True)


COMMANDS = [sql]
