"""Copy runs from one store to another (a laptop's SQLite file to the team's PostgreSQL).

Every row of a run travels: the run, its segments, epochs, steps (superseded ones
included), checkpoint rows and anomalies, with whatever columns the schema has (the
tables are taken from the models, so columns a migration adds travel too). Checkpoint
files stay where they are: their paths are copied as text.

Each run is copied in one transaction of the destination. Copying again is a no-op; a
run that went on at the source after an earlier copy brings what is new (segments,
epochs, steps, ...) and the columns a running run updates (its status, heartbeat,
``superseded_by`` marks, checkpoints' ``pruned_at``). A destination run with a different
history (a row the source does not have, or a recorded value that differs) is refused,
not merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, and_, insert, select, text, update

from hlbd.errors import StoreError
from hlbd.store import Store, connect, schema
from hlbd.store.tables import Base

# Columns a run's rows may change after they were written (so after a copy): everything
# else is history, and must be equal in both stores.
MUTABLE = {
    "runs": {"status", "finished_at", "heartbeat_at", "config", "error", "tags", "notes"},
    "segments": {"status", "ended_at"},
    "checkpoints": {"pruned_at"},
}
MUTABLE_ANYWHERE = {"superseded_by"}
# Marks that are set once and never cleared: a copy does not clear one the destination has.
SET_ONCE = {"pruned_at"}


@dataclass
class CopyOutcome:
    """What copying one run did: ``copied``, ``updated``, ``already copied`` or
    ``refused`` (``reason`` says why); ``added``/``changed``: rows per table."""

    run_id: str
    outcome: str
    added: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    def describe(self) -> str:
        if self.outcome == "refused":
            return f"{self.run_id}: refused: {self.reason}"
        if self.outcome == "already copied":
            return f"{self.run_id}: already copied (nothing new)"
        added = ", ".join(f"{n} {t}" for t, n in self.added.items() if n and t != "runs")
        changed = ", ".join(f"{n} {t}" for t, n in self.changed.items() if n)
        if self.outcome == "copied":
            return f"{self.run_id}: copied ({added or 'the run alone'})"
        what = "; ".join(part for part in (added and f"added {added}",
                                           changed and f"updated {changed} row(s)") if part)
        return f"{self.run_id}: brought up to date ({what})"


ORDER = ("runs", "segments", "epochs", "steps", "checkpoints", "anomalies")


def run_tables() -> list[Table]:
    """The tables that hold a run's rows, parents first: runs, segments, epochs, ...
    (and any table a later migration adds with a run_id column)."""
    tables = [t for t in Base.metadata.sorted_tables if "run_id" in t.c]
    known = [t for name in ORDER for t in tables if t.name == name]
    return known + [t for t in tables if t not in known]


def copy_runs(src: str, dst: str, run_ids: list[str] | None = None) -> list[CopyOutcome]:
    """Copy runs (``run_ids``: ids or unique prefixes; None: all) from the database
    ``src`` to ``dst`` (URLs or SQLite paths; ``dst`` is created if new)."""
    src_url, dst_url = connect.resolve_db_url(src), connect.resolve_db_url(dst)
    if _same_database(src_url, dst_url):
        raise StoreError(f"source and destination are the same database ({src_url})")
    reader = connect.read_engine(src_url)
    try:
        _check_schema(reader, src_url)
        source = Store(src_url, reader)
        if run_ids:
            wanted = [source.resolve_run_id(r) for r in run_ids]
            wanted = list(dict.fromkeys(wanted))
        else:
            wanted = [r["run_id"] for r in reversed(source.list_runs())]  # oldest first
        target = Store.open(dst_url)
        try:
            return [_copy_one(reader, target.engine, run_id) for run_id in wanted]
        finally:
            target.close()
    finally:
        reader.dispose()


def _same_database(a: str, b: str) -> bool:
    path_a, path_b = connect.sqlite_path(a), connect.sqlite_path(b)
    if path_a is not None and path_b is not None:
        return path_a.resolve() == path_b.resolve()
    return a == b


def _check_schema(engine, url: str) -> None:
    revision = schema.current_revision(engine)
    head = schema.head_revision()
    if revision == head:
        return
    schema._check_known(revision, url)
    if revision is None:
        raise StoreError(f"{url} holds no hlbd run database (no schema revision)")
    raise StoreError(f"database {url} is at schema revision {revision!r}, older than "
                     f"{head!r}; run `hlbd db upgrade --db {url}` first")


def _read_run(conn: Connection, run_id: str) -> dict[str, list[dict]]:
    return {t.name: [dict(r) for r in conn.execute(select(t).where(t.c.run_id == run_id))
                     .mappings()] for t in run_tables()}


def _snapshot(engine, run_id: str) -> dict[str, list[dict]]:
    """All of a run's rows, read in one transaction (one consistent view)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # the read engine is in autocommit mode
        else:
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        try:
            return _read_run(conn, run_id)
        finally:
            conn.rollback()


def _surrogate(table: Table) -> str | None:
    """The autoincrement id column of a table (each store numbers its own), or None."""
    pk = list(table.primary_key.columns)
    if len(pk) == 1 and pk[0].autoincrement is True:
        return pk[0].name
    return None


def _mutable(table: Table) -> set[str]:
    return (MUTABLE.get(table.name, set()) | MUTABLE_ANYWHERE) & {c.name for c in table.columns}


def _identity(table: Table, row: dict) -> tuple:
    """What names a row in both stores: its primary key, or for a table numbered by a
    surrogate id, all of its recorded values."""
    surrogate = _surrogate(table)
    if surrogate is None:
        return tuple(row[c.name] for c in table.primary_key.columns)
    return tuple(_comparable(row[c.name]) for c in table.columns
                 if c.name != surrogate and c.name not in _mutable(table))


def _comparable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _same(a: Any, b: Any) -> bool:
    return _comparable(a) == _comparable(b)


def _copy_one(reader, writer, run_id: str) -> CopyOutcome:
    rows = _snapshot(reader, run_id)
    with writer.begin() as conn:
        if conn.dialect.name == "postgresql":  # two copies of one run wait for each other
            conn.execute(text("SELECT pg_advisory_xact_lock(:key, hashtext(:run_id))"),
                         {"key": schema.SCHEMA_LOCK_KEY, "run_id": run_id})
        there = _read_run(conn, run_id)
        if not there["runs"]:
            clash = _source_hash_clash(conn, rows)
            if clash:
                return CopyOutcome(run_id, "refused", reason=clash)
        plan = _plan(rows, there)
        if isinstance(plan, str):
            return CopyOutcome(run_id, "refused", reason=plan)
        added, changed = {}, {}
        for table in run_tables():
            new, updates = plan[table.name]
            surrogate = _surrogate(table)
            if new:
                conn.execute(insert(table), [{k: v for k, v in r.items() if k != surrogate}
                                             for r in new])
            for key, values in updates:
                conn.execute(update(table).where(and_(*(
                    c == v for c, v in zip(_key_columns(table), key)))).values(**values))
            added[table.name], changed[table.name] = len(new), len(updates)
    if not any(added.values()) and not any(changed.values()):
        return CopyOutcome(run_id, "already copied")
    return CopyOutcome(run_id, "updated" if there["runs"] else "copied", added, changed)


def _key_columns(table: Table) -> list:
    surrogate = _surrogate(table)
    if surrogate is None:
        return list(table.primary_key.columns)
    return [table.c[surrogate]]


def _source_hash_clash(conn: Connection, rows: dict) -> str | None:
    source_hash = rows["runs"][0].get("source_hash")
    if source_hash is None:
        return None
    runs = Base.metadata.tables["runs"]
    other = conn.scalar(select(runs.c.run_id).where(runs.c.source_hash == source_hash))
    if other is None:
        return None
    return (f"the destination has run {other} imported from the same report "
            f"(source_hash {source_hash[:12]}...)")


def _plan(src: dict[str, list[dict]], dst: dict[str, list[dict]]):
    """Per table: (rows to insert, [(key, changed mutable values)]), or why the
    destination's history differs."""
    plan = {}
    for table in run_tables():
        mutable = _mutable(table)
        surrogate = _surrogate(table)
        source: dict[tuple, list[dict]] = {}
        for r in src[table.name]:
            source.setdefault(_identity(table, r), []).append(r)
        updates = []
        for row in dst[table.name]:
            same_key = source.get(_identity(table, row))
            match = same_key.pop(0) if same_key else None
            if match is None:
                return (f"the destination's run has a different history: a {table.name} "
                        f"row the source does not have ({_describe(table, row)})")
            for column in (c.name for c in table.columns):
                if column in mutable or column == surrogate:
                    continue
                if not _same(row[column], match[column]):
                    return (f"the destination's run has a different history: "
                            f"{table.name} {_describe(table, row)}: {column} is "
                            f"{row[column]!r} there, {match[column]!r} here")
            values = {c: match[c] for c in mutable if not _same(row[c], match[c])
                      and not (c in SET_ONCE and match[c] is None)}
            if values:
                key = ((row[surrogate],) if surrogate else
                       tuple(row[c.name] for c in table.primary_key.columns))
                updates.append((key, values))
        plan[table.name] = ([r for same_key in source.values() for r in same_key], updates)
    return plan


def _describe(table: Table, row: dict) -> str:
    names = [c for c in ("segment", "epoch", "step", "rule", "path") if c in row]
    return ", ".join(f"{c} {row[c]}" for c in names) or f"run {row['run_id']}"
