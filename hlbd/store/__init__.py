"""The run store: the only code that writes the run database.

Writers (the trainer's recorder, import) call the ``record_*`` methods; each is one
short transaction. Readers (CLI, explorer) get plain dicts, never ORM objects.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import math
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, bindparam, exc, exists, func, insert, select, update
from sqlalchemy.orm import aliased

from hlbd.errors import ClaimLostError, RunClaimedError, UnknownRunError
from hlbd.store import connect, schema
from hlbd.store.tables import Anomaly, Checkpoint, Epoch, Run, Segment, Step, StepRollup

# The steps columns in the order of the rows _insert_steps builds (its COPY names them).
STEP_COLUMNS = ("run_id, segment, step, epoch, loss, loss_is_nan, grad_norm, "
                "grad_norm_is_nan, lr, lr_is_nan")
# A live trainer refreshes its heartbeat at least this often ...
HEARTBEAT_SECONDS = 30.0
# ... so a "running" run whose heartbeat is older than this has stopped without saying so.
STALE_AFTER = timedelta(seconds=120)
# Steps per row of step_rollups (the explorer reads long runs from there, see
# hlbd.store.buckets); migration 0003 filled it for steps recorded before it existed.
ROLLUP_STEPS = 32


# Store._hold's statements, built once (building them per write cost more than the write).
_HOLD_SEGMENT = (update(Segment)
                 .where(Segment.run_id == bindparam("hold_run"),
                        Segment.segment == bindparam("hold_segment"),
                        Segment.status != "crashed")
                 .values(status=Segment.status))
# On SQLite a write transaction holds the database's write lock from its BEGIN
# IMMEDIATE, so reading the segment's row sees the last committed claim and no other
# process can change it before the commit: a read is enough, and keeps the row's page
# out of every commit. A server needs the UPDATE's row lock (see Store._hold).
_HOLD_SEGMENT_READ = ("SELECT segment FROM segments WHERE run_id = ? AND segment = ? "
                      "AND status != 'crashed'")
# Writes closer together than this refresh the heartbeat once (it is judged in minutes,
# STALE_AFTER): a trainer writing many small batches a second dirties the run's row once.
BEAT_EVERY_SECONDS = 1.0
_HEARTBEAT = (update(Run).where(Run.run_id == bindparam("beat_run"))
              .values(heartbeat_at=bindparam("beat_at", type_=Run.heartbeat_at.type)))

# Store.steps' columns, in the order it unpacks them.
_STEPS_READ = ("SELECT segment, step, epoch, loss, loss_is_nan, grad_norm, grad_norm_is_nan, "
               "lr, lr_is_nan, superseded_by FROM steps")


def utcnow() -> datetime:
    """Naive UTC time, the form every timestamp in the store takes."""
    return datetime.now(UTC).replace(tzinfo=None)


def split_nan(value: float | None) -> tuple[float | None, bool]:
    """(stored value, is_nan): SQLite turns NaN into NULL, so NaN travels as a flag."""
    if value is not None and math.isnan(value):
        return None, True
    return value, False


def join_nan(value: float | None, is_nan: bool) -> float | None:
    """The measured value back from its stored form (NaN, a number, or None = missing)."""
    return math.nan if is_nan else value


# Columns stored with an ``*_is_nan`` flag beside them, per table.
NAN_FLAGGED = {"epochs": ("loss", "grad_norm", "lr"), "steps": ("loss", "grad_norm", "lr"),
               "anomalies": ("value",)}


def _join_nans(row: dict, table: str) -> dict:
    for column in NAN_FLAGGED[table]:
        row[column] = join_nan(row[column], bool(row.pop(f"{column}_is_nan")))
    return row


class Store:
    """Reads and writes runs, segments, epochs, steps, checkpoints and anomalies."""

    def __init__(self, url: str, engine: Engine):
        self.url = url
        self.engine = engine
        self._beats: dict[tuple[str, int], float] = {}  # (run, segment): last beat's time
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

    # -- writes ---------------------------------------------------------------------

    def create_run(self, name: str, config: dict, dataset_stats: dict, *,
                   vocab: Sequence[str] | None = None, run_dir: str | None = None,
                   source: str = "hlbd", source_hash: str | None = None,
                   extra: dict | None = None, status: str = "running",
                   run_id: str | None = None,
                   epochs: Sequence[dict[str, Any]] = (),
                   hosts: Sequence[str] | None = None) -> str:
        """Insert a run and its first segment; returns the new run id.

        ``epochs`` are rows the run already has (an import): written as segment 1 in the
        same transaction, so an import is all there or not there at all. ``hosts``: the
        host of each training process, in rank order (the segment's world size).
        """
        run_id = run_id or uuid.uuid4().hex
        with self.engine.begin() as conn:
            _insert_run(conn, run_id, utcnow(), name=name, status=status, config=config,
                        dataset_stats=dataset_stats, vocab=vocab, run_dir=run_dir,
                        source=source, source_hash=source_hash, extra=extra,
                        epochs=epochs, hosts=hosts)
        return run_id

    def begin_segment(self, run_id: str, start_epoch: int,
                      resumed_from: str | None = None, config: dict | None = None, *,
                      hosts: Sequence[str] | None = None, force: bool = False) -> int:
        """Claim ``run_id`` and open a new attempt that continues after ``start_epoch``.

        The claim is one transaction: an attempt still marked running must be dead (its
        process gone from this host, or no heartbeat for STALE_AFTER; ``force`` skips
        that check) and is taken over by a compare-and-set that only one claimant can
        win; the new attempt is inserted as running, which the unique index
        ``ux_segments_one_running`` allows once per run. A claimant that loses raises
        RunClaimedError having written nothing.

        Epochs, steps and anomaly rows recorded after ``start_epoch`` by earlier
        segments stay in the store, marked as superseded by the new segment. ``config``,
        when given, becomes the run's config (a resume may change the epoch total,
        device, save interval); ``hosts``: the host of each training process, in rank
        order.
        """
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                segment = self._claim(conn, run_id, now, force, start_epoch, resumed_from,
                                      hosts)
                for table in (Epoch, Step, StepRollup, Anomaly):
                    conn.execute(update(table).where(
                        table.run_id == run_id, table.epoch > start_epoch,
                        table.superseded_by.is_(None)).values(superseded_by=segment))
                run_values = {"status": "running", "heartbeat_at": now,
                              "finished_at": None, "error": None}
                if config is not None:
                    run_values["config"] = json.dumps(config, sort_keys=True)
                conn.execute(update(Run).where(Run.run_id == run_id).values(**run_values))
        except exc.IntegrityError:
            # Another claimant inserted its running segment (or took the same number) first.
            raise RunClaimedError(f"run {run_id} was claimed by another process at the same "
                                  "moment; this one stopped without writing anything "
                                  "(`hlbd runs` shows who holds it)") from None
        return segment

    def _claim(self, conn, run_id: str, now: datetime, force: bool, start_epoch: int,
               resumed_from: str | None, hosts: Sequence[str] | None) -> int:
        """Inside ``conn``'s transaction: take over a dead holder, insert our segment."""
        holder = conn.execute(
            select(Segment.segment, Segment.pid, Segment.hostname, Run.heartbeat_at,
                   Run.created_at)
            .join(Run, Run.run_id == Segment.run_id)
            .where(Segment.run_id == run_id, Segment.status == "running")).first()
        if holder is not None:
            state = holder_state(holder.pid, holder.hostname,
                                 holder.heartbeat_at or holder.created_at, now)
            if state == "running" and not force:
                raise RunClaimedError(
                    f"run {run_id} is still being written by process {holder.pid} on "
                    f"{holder.hostname}; stop it first, or pass --force if that process "
                    "is gone")
            beat = (Run.heartbeat_at.is_(None) if holder.heartbeat_at is None
                    else Run.heartbeat_at == holder.heartbeat_at)
            # Compare-and-set: only if the holder is still the one we judged dead (same
            # segment, still running, no heartbeat since). One claimant can win this.
            taken = conn.execute(update(Segment).where(
                Segment.run_id == run_id, Segment.segment == holder.segment,
                Segment.status == "running",
                exists(select(Run.run_id).where(Run.run_id == run_id, beat)))
                .values(status="crashed", ended_at=now)).rowcount
            if taken != 1:
                raise RunClaimedError(
                    f"run {run_id} was taken over by another process, or its holder "
                    "wrote again, while this one was claiming it; nothing was written")
        segment = (conn.scalar(select(func.max(Segment.segment))
                               .where(Segment.run_id == run_id)) or 0) + 1
        conn.execute(insert(Segment).values(
            run_id=run_id, segment=segment, start_epoch=start_epoch,
            resumed_from=resumed_from, started_at=now, status="running", pid=os.getpid(),
            hostname=socket.gethostname(), **_processes(hosts)))
        return segment

    def _hold(self, conn, run_id: str, segment: int, now: datetime, *,
              beat: bool = False) -> None:
        """Refresh the heartbeat, or raise ClaimLostError if a later attempt took over.

        Every write of a training attempt runs this in its transaction, so an attempt
        that was taken over (``--force``, or judged dead while it was only paused)
        cannot add a row after the new attempt started. The check updates the attempt's
        own segment row, so on a server it waits for a takeover in progress and then
        sees its outcome (a condition on another row could read an older snapshot); on
        SQLite the write lock makes a read enough. The heartbeat is refreshed when
        ``beat`` or when this store's last refresh is BEAT_EVERY_SECONDS old.
        """
        if conn.dialect.name == "sqlite":
            mine = len(conn.exec_driver_sql(_HOLD_SEGMENT_READ, (run_id, segment)).all())
        else:
            mine = conn.execute(_HOLD_SEGMENT, {"hold_run": run_id,
                                                "hold_segment": segment}).rowcount
        if mine != 1:
            raise _claim_lost(run_id, segment)
        if self._beat_due(run_id, segment, force=beat):
            conn.execute(_HEARTBEAT, {"beat_run": run_id, "beat_at": now})

    def _beat_due(self, run_id: str, segment: int, *, force: bool = False) -> bool:
        """Whether this write refreshes the heartbeat (``force``, or BEAT_EVERY_SECONDS
        since this store last did); if so, its time is taken as the last refresh."""
        at = time.monotonic()
        if not force and at - self._beats.get((run_id, segment), -math.inf) < BEAT_EVERY_SECONDS:
            return False
        self._beats[(run_id, segment)] = at
        return True

    def record_epoch(self, run_id: str, segment: int, epoch: dict[str, Any],
                     steps: Sequence[dict[str, Any]] = ()) -> None:
        """Write one epoch's row, its not yet written steps and a heartbeat, atomically.

        ``recorded_at`` is when the transaction holds the write lock, so a row that
        waited for another process's lock says when it really reached the store.
        """
        with self.engine.begin() as conn:
            now = utcnow()
            self._hold(conn, run_id, segment, now)
            self._insert_steps(conn, run_id, segment, steps)
            conn.execute(insert(Epoch), [_epoch_values(run_id, segment, epoch, now)])

    def record_steps(self, run_id: str, segment: int,
                     steps: Sequence[dict[str, Any]]) -> None:
        """Write a batch of optimizer steps (and refresh the heartbeat) in one transaction."""
        if self.engine.dialect.name == "sqlite":
            self._record_steps_sqlite(run_id, segment, steps)
            return
        with self.engine.begin() as conn:
            self._hold(conn, run_id, segment, utcnow())
            self._insert_steps(conn, run_id, segment, steps)

    def _record_steps_sqlite(self, run_id: str, segment: int,
                             steps: Sequence[dict[str, Any]]) -> None:
        """record_steps on SQLite, through the driver's connection from the engine's pool.

        The most frequent write: SQLAlchemy's execution layer cost about 0.1 ms a
        transaction, more than SQLite's own work for a trainer's batch of a few hundred
        steps. The same statements, lock (BEGIN IMMEDIATE) and claim check as _hold and
        _insert_steps; a driver error is raised as SQLAlchemy's, as any other write's.
        """
        columns = step_columns(run_id, segment, steps)
        connection = self.engine.raw_connection()
        statement, params = "BEGIN IMMEDIATE", ()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(statement)
                statement, params = _HOLD_SEGMENT_READ, (run_id, segment)
                if len(cursor.execute(statement, params).fetchall()) != 1:
                    raise _claim_lost(run_id, segment)
                if self._beat_due(run_id, segment):
                    statement = "UPDATE runs SET heartbeat_at = ? WHERE run_id = ?"
                    params = (self._time_to_db(utcnow()), run_id)
                    cursor.execute(statement, params)
                if columns is not None:
                    statement, params = _insert_sql("steps", STEP_COLUMNS, "?"), list(
                        zip(*columns))
                    cursor.executemany(statement, params)
                    statement = _insert_sql("step_rollups", _ROLLUP_COLUMNS, "?")
                    params = rollup_rows(columns)
                    cursor.executemany(statement, params)
                statement, params = "COMMIT", ()
                cursor.execute(statement)
            except BaseException:
                if connection.driver_connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()
        except sqlite3.Error as error:
            raise exc.DBAPIError.instance(statement, params, error, sqlite3.Error) from error
        finally:
            connection.close()

    @staticmethod
    def _insert_steps(conn, run_id: str, segment: int,
                      steps: Iterable[dict[str, Any]]) -> None:
        columns = step_columns(run_id, segment, steps)
        if columns is None:
            return
        rows = list(zip(*columns))
        if conn.dialect.driver == "psycopg":
            # COPY: several times faster than any INSERT on PostgreSQL.
            cursor = conn.connection.dbapi_connection.cursor()
            with cursor.copy(f"COPY steps ({STEP_COLUMNS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            # Positional executemany: the per-step path must stay close to raw sqlite3.
            conn.exec_driver_sql(_insert_sql("steps", STEP_COLUMNS, _mark(conn)), rows)
        _insert_rollups(conn, rollup_rows(columns))

    def import_runs(self, runs: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
        """Insert runs recorded elsewhere, with their epochs and steps, in ONE transaction.

        Each run: ``name``, ``dataset_stats``, ``extra``, ``source_hash`` (of the file it
        came from), ``epochs`` (dicts of epoch, loss, grad_norm, lr), ``steps`` (dicts of
        step, epoch, loss, grad_norm, lr) and ``same_as`` (an id the run had where it was
        recorded, or None). Returns ``(run_id, outcome)`` per run: ``imported``;
        ``already imported`` (a run from the same file content is here) or
        ``recorded here`` (``same_as`` is a run of this store), for which nothing is
        written. Imported runs have source ``imported`` and status ``imported``.
        """
        now = utcnow()
        outcomes = []
        with self.engine.begin() as conn:
            for run in runs:
                existing = conn.scalar(select(Run.run_id).where(
                    Run.source_hash == run["source_hash"]))
                if existing is not None:
                    outcomes.append((existing, "already imported"))
                    continue
                if run.get("same_as") and conn.scalar(select(Run.run_id).where(
                        Run.run_id == run["same_as"])):
                    outcomes.append((run["same_as"], "recorded here"))
                    continue
                run_id = uuid.uuid4().hex
                _insert_run(conn, run_id, now, name=run["name"], status="imported",
                            config={}, dataset_stats=run["dataset_stats"],
                            source="imported", source_hash=run["source_hash"],
                            extra=run["extra"], epochs=run["epochs"])
                self._insert_steps(conn, run_id, 1, run["steps"])
                outcomes.append((run_id, "imported"))
        return outcomes

    def heartbeat(self, run_id: str, segment: int) -> None:
        """Say attempt ``segment`` of ``run_id`` is alive (ClaimLostError if taken over)."""
        with self.engine.begin() as conn:
            self._hold(conn, run_id, segment, utcnow(), beat=True)

    def record_checkpoint(self, run_id: str, segment: int, epoch: int, path: str,
                          size_bytes: int | None) -> None:
        with self.engine.begin() as conn:
            self._hold(conn, run_id, segment, utcnow())
            conn.execute(insert(Checkpoint).values(
                run_id=run_id, segment=segment, epoch=epoch, path=path,
                created_at=utcnow(), size_bytes=size_bytes))

    def mark_checkpoints_pruned(self, run_id: str, segment: int, ids: Sequence[int]) -> None:
        """Mark checkpoint rows ``ids`` of ``run_id`` as pruned (their files are about to
        be deleted), by attempt ``segment``, which must still hold the run."""
        if not ids:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            self._hold(conn, run_id, segment, now)
            conn.execute(update(Checkpoint).where(
                Checkpoint.run_id == run_id, Checkpoint.id.in_(list(ids)),
                Checkpoint.pruned_at.is_(None)).values(pruned_at=now))

    def record_anomalies(self, run_id: str, segment: int, flags: Sequence[dict]) -> None:
        if not flags:
            return
        now = utcnow()
        rows = []
        for f in flags:
            value, value_is_nan = split_nan(f.get("value"))
            rows.append({"run_id": run_id, "segment": segment, "epoch": f.get("epoch"),
                         "step": f.get("step"), "rule": f["rule"], "value": value,
                         "value_is_nan": value_is_nan, "threshold": f.get("threshold"),
                         "message": f["message"], "created_at": now})
        with self.engine.begin() as conn:
            self._hold(conn, run_id, segment, now)
            conn.execute(insert(Anomaly), rows)

    def finish_run(self, run_id: str, segment: int, status: str,
                   error: str | None = None) -> bool:
        """Close the segment and set the run's status (finished/failed/interrupted).

        Returns False, writing nothing, when a later attempt has taken the run over:
        the run's status is then that attempt's to set.
        """
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                self._hold(conn, run_id, segment, now)
                conn.execute(update(Segment).where(Segment.run_id == run_id,
                                                   Segment.segment == segment)
                             .values(status=status, ended_at=now))
                conn.execute(update(Run).where(Run.run_id == run_id).values(
                    status=status, finished_at=now, error=error))
        except ClaimLostError:
            return False
        return True

    # -- reads ----------------------------------------------------------------------

    def resolve_run_id(self, run_id: str) -> str:
        """The full id for an id or unique prefix; an ambiguous one lists candidates."""
        with self.engine.connect() as conn:
            matches = conn.scalars(select(Run.run_id).where(
                Run.run_id.startswith(run_id, autoescape=True)).limit(11)).all()
        if not run_id or not matches:
            raise UnknownRunError(f"no run with id {run_id!r} in {self.url}; "
                                  "`hlbd runs` lists the runs")
        if run_id in matches:
            return run_id
        if len(matches) > 1:
            shown = ", ".join(matches[:10]) + (", ..." if len(matches) > 10 else "")
            raise UnknownRunError(f"run id prefix {run_id!r} is ambiguous: {shown}")
        return matches[0]

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run as a dict (config, dataset_stats, vocab and extra decoded)."""
        run_id = self.resolve_run_id(run_id)
        with self.engine.connect() as conn:
            row = conn.execute(select(Run, *_latest_segment_columns())
                               .where(Run.run_id == run_id)).mappings().one()
        return _decode_run(dict(row))

    def list_runs(self) -> list[dict[str, Any]]:
        """All runs, newest first, with epoch count, last and best loss, live status."""
        effective = Epoch.superseded_by.is_(None)
        agg = (select(Epoch.run_id, func.count().label("epochs"),
                      func.min(Epoch.loss).label("best_loss"),
                      func.max(Epoch.epoch).label("last_epoch"))
               .where(effective).group_by(Epoch.run_id).subquery())
        last = aliased(Epoch)
        query = (select(Run, func.coalesce(agg.c.epochs, 0).label("epochs"),
                        agg.c.best_loss, last.loss.label("last_loss"),
                        last.loss_is_nan.label("last_loss_is_nan"),
                        *_latest_segment_columns())
                 .outerjoin(agg, agg.c.run_id == Run.run_id)
                 .outerjoin(last, and_(last.run_id == Run.run_id,
                                       last.epoch == agg.c.last_epoch,
                                       last.superseded_by.is_(None)))
                 .order_by(Run.created_at.desc()))
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for r in rows:
            r["last_loss"] = join_nan(r["last_loss"], bool(r.pop("last_loss_is_nan")))
        return [_decode_run(r) for r in rows]

    def epochs(self, run_id: str, *, include_superseded: bool = False) -> list[dict]:
        """Per-epoch rows of a run in epoch order (effective history unless asked)."""
        query = select(Epoch).where(Epoch.run_id == run_id)
        if not include_superseded:
            query = query.where(Epoch.superseded_by.is_(None))
        query = query.order_by(Epoch.epoch, Epoch.segment)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        return [_join_nans(r, "epochs") for r in rows]

    def steps(self, run_id: str, *, include_superseded: bool = False,
              epochs: Sequence[int] | None = None) -> list[dict]:
        """Per-step rows of a run in step order (only those of ``epochs`` when given).

        Each row: run_id, segment, step, epoch, loss, grad_norm, lr (NaN for a measured
        NaN, None for a value not recorded) and superseded_by.
        """
        with self.engine.connect() as conn:
            mark = _mark(conn)
            sql, params = f"{_STEPS_READ} WHERE run_id = {mark}", [run_id]
            if epochs is not None:
                epochs = list(epochs)
                if not epochs:
                    return []
                sql += f" AND epoch IN ({', '.join([mark] * len(epochs))})"
                params += epochs
            if not include_superseded:
                sql += " AND superseded_by IS NULL"
            # The driver's own cursor and plain tuples: a 100,000-step run is read whole
            # for an export or the anomaly rules, and SQLAlchemy's rows (ORM or Core)
            # cost more than the query itself.
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(f"{sql} ORDER BY step, segment", params)
                rows = cursor.fetchall()
            finally:
                cursor.close()
        nan = math.nan
        return [{"run_id": run_id, "segment": segment, "step": step, "epoch": epoch,
                 "loss": nan if loss_nan else loss,
                 "grad_norm": nan if norm_nan else norm,
                 "lr": nan if lr_nan else lr, "superseded_by": superseded_by}
                for (segment, step, epoch, loss, loss_nan, norm, norm_nan, lr, lr_nan,
                     superseded_by) in rows]

    def segments(self, run_id: str) -> list[dict]:
        """A run's attempts in order; ``hosts`` decoded (a list in rank order, or None)."""
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(
                select(Segment).where(Segment.run_id == run_id)
                .order_by(Segment.segment)).mappings()]
        for r in rows:
            r["hosts"] = json.loads(r["hosts"]) if r["hosts"] else None
        return rows

    def checkpoints(self, run_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(Checkpoint).where(Checkpoint.run_id == run_id)
                .order_by(Checkpoint.epoch, Checkpoint.id)).mappings()]

    def newest_checkpoint(self, run_id: str) -> dict | None:
        """The checkpoint to resume ``run_id`` from: the newest on its effective history.

        Returns ``{"segment", "epoch", "path", "size_bytes"}`` or None (see
        checkpoint_candidates).
        """
        return next(iter(self.checkpoint_candidates(run_id)), None)

    def checkpoint_candidates(self, run_id: str) -> list[dict]:
        """The checkpoints ``run_id`` could resume from, newest first.

        Candidates are the run's checkpoints and the files its segments resumed from,
        less those a later segment superseded and those pruned (their files deleted).
        Each is ``{"segment", "epoch", "path", "size_bytes"}`` (size: None for a file
        only a segment names).
        """
        segments = self.segments(run_id)
        rows = self.checkpoints(run_id)
        candidates = [{"segment": c["segment"], "epoch": c["epoch"], "path": c["path"],
                       "size_bytes": c["size_bytes"]} for c in rows if c["pruned_at"] is None]
        candidates += [{"segment": s["segment"], "epoch": s["start_epoch"],
                        "path": s["resumed_from"], "size_bytes": None}
                       for s in segments
                       if s["resumed_from"] and not _pruned_start(rows, s)]
        effective = [c for c in candidates
                     if not superseded(segments, c["segment"], c["epoch"])]
        newest_first, seen = [], set()
        for c in sorted(effective, key=lambda c: (c["epoch"], c["segment"]), reverse=True):
            if c["path"] not in seen:
                seen.add(c["path"])
                newest_first.append(c)
        return newest_first

    def anomalies(self, run_id: str | None = None, *,
                  include_superseded: bool = False) -> list[dict]:
        """Flags raised while training (the effective history's, unless asked)."""
        query = select(Anomaly).order_by(Anomaly.run_id, Anomaly.id)
        if run_id is not None:
            query = query.where(Anomaly.run_id == run_id)
        if not include_superseded:
            query = query.where(Anomaly.superseded_by.is_(None))
        with self.engine.connect() as conn:
            return [_join_nans(dict(r), "anomalies") for r in conn.execute(query).mappings()]


def _pruned_start(checkpoints: Sequence[dict], segment: dict) -> bool:
    """Whether the file ``segment`` resumed from is a checkpoint of the run that was
    pruned since: the newest row of that path and epoch written before the segment."""
    written = [c for c in checkpoints if c["path"] == segment["resumed_from"]
               and c["epoch"] == segment["start_epoch"] and c["segment"] < segment["segment"]]
    return bool(written) and written[-1]["pruned_at"] is not None


def superseded(segments: Sequence[dict], segment: int, epoch: int) -> bool:
    """Whether the state segment ``segment`` reached at ``epoch`` is off the effective
    history: a later segment started from an earlier epoch and superseded it."""
    return any(s["segment"] > segment and s["start_epoch"] < epoch for s in segments)


def _insert_run(conn, run_id: str, now: datetime, *, name: str, status: str, config: dict,
                dataset_stats: dict, vocab: Sequence[str] | None = None,
                run_dir: str | None = None, source: str = "hlbd",
                source_hash: str | None = None, extra: dict | None = None,
                epochs: Sequence[dict[str, Any]] = (),
                hosts: Sequence[str] | None = None) -> None:
    """A run, its first segment and any epochs it already has, inside ``conn``'s
    transaction."""
    ended = None if status == "running" else now
    conn.execute(insert(Run).values(
        run_id=run_id, name=name, status=status, created_at=now, finished_at=ended,
        heartbeat_at=now, config=json.dumps(config, sort_keys=True),
        dataset_stats=json.dumps(dataset_stats, sort_keys=True),
        vocab=json.dumps(list(vocab), ensure_ascii=False) if vocab else None,
        run_dir=run_dir, source=source, source_hash=source_hash,
        extra=json.dumps(extra, sort_keys=True) if extra else None))
    conn.execute(insert(Segment).values(
        run_id=run_id, segment=1, start_epoch=0, started_at=now, ended_at=ended,
        status=status, pid=os.getpid(), hostname=socket.gethostname(),
        **_processes(hosts)))
    if epochs:
        # Rows recorded elsewhere: when each was recorded is not known (NULL).
        conn.execute(insert(Epoch), [_epoch_values(run_id, 1, e, None) for e in epochs])


def _processes(hosts: Sequence[str] | None) -> dict[str, Any]:
    """A segment's world size and hosts columns (NULL when not known: an import)."""
    if not hosts:
        return {"world_size": None, "hosts": None}
    return {"world_size": len(hosts), "hosts": json.dumps(list(hosts))}


def _epoch_values(run_id: str, segment: int, epoch: dict[str, Any],
                  recorded_at: datetime | None) -> dict[str, Any]:
    values = {**epoch, "run_id": run_id, "segment": segment, "recorded_at": recorded_at}
    for column in NAN_FLAGGED["epochs"]:
        values[column], values[f"{column}_is_nan"] = split_nan(epoch.get(column))
    return values


_ROLLUP_COLUMNS = ("run_id, segment, first_step, last_step, epoch, steps, "
                   + ", ".join(f"{m}_{a}" for m in ("loss", "grad_norm", "lr")
                               for a in ("count", "sum", "min", "max", "nonfinite")))


def step_columns(run_id: str, segment: int,
                 steps: Iterable[dict[str, Any]]) -> list[Sequence] | None:
    """The columns of the steps rows (STEP_COLUMNS' order) for ``steps``, or None for
    no steps. A NaN is stored as NULL with its flag set; ``None`` (not recorded) as
    NULL without it.

    Built a column at a time: a metric whose sum is finite holds no NaN, so its flags
    are all false without a test per value (the hot path of every trainer's write).
    """
    steps = steps if isinstance(steps, Sequence) else list(steps)
    n = len(steps)
    if not n:
        return None
    columns: list[Sequence] = [[run_id] * n, [segment] * n, [s["step"] for s in steps],
                               [s["epoch"] for s in steps]]
    for name in ("loss", "grad_norm", "lr"):
        values = [s[name] for s in steps]
        try:
            clean = math.isfinite(sum(values))
        except TypeError:  # a None: not recorded
            clean = False
        if clean:
            columns += (values, [False] * n)
        else:
            flags = [isinstance(v, float) and math.isnan(v) for v in values]
            columns += ([None if nan else v for v, nan in zip(values, flags)], flags)
    return columns


def rollup_rows(columns: Sequence[Sequence]) -> list[tuple]:
    """step_rollups rows for the steps rows whose columns ``step_columns`` built.

    One row per run of consecutive steps sharing an epoch and a ROLLUP_STEPS-aligned
    stretch (``(step - 1) // ROLLUP_STEPS``). Per metric: count, sum, min and max of
    the finite values and the number of NaN/Inf ones; a value not recorded (None
    without its NaN flag) is in neither.
    """
    steps, epochs = columns[2], columns[3]
    if not steps:
        return []
    first, n = steps[0], len(steps)
    if steps != list(range(first, first + n)) or epochs != sorted(epochs):
        # In step order, so a row's first and last steps bound its steps.
        return _rollup_rows_one_by_one(sorted(zip(*columns), key=lambda row: row[2]))
    # Consecutive steps, epochs in order (what the trainer writes): cut where a stretch
    # or an epoch starts, then summarise each piece's columns at C speed.
    cuts = {0, n, *range(ROLLUP_STEPS - (first - 1) % ROLLUP_STEPS, n, ROLLUP_STEPS)}
    cuts.update(bisect.bisect_left(epochs, e) for e in set(epochs))
    bounds = sorted(cuts)
    metrics = [(columns[4], columns[5]), (columns[6], columns[7]), (columns[8], columns[9])]
    # A column with every value finite (the usual case) needs no checks per piece.
    clean = [None not in values and math.isfinite(sum(values)) for values, _ in metrics]
    run_id, segment = columns[0][0], columns[1][0]
    out = []
    for a, b in itertools.pairwise(bounds):
        row = [run_id, segment, steps[a], steps[b - 1], epochs[a], b - a]
        for (values, flags), fine in zip(metrics, clean):
            part = values[a:b]
            row += ((b - a, sum(part), min(part), max(part), 0) if fine else
                    _summary(part, flags[a:b]))
        out.append(tuple(row))
    return out


def _rollup_rows_one_by_one(rows: Sequence[tuple]) -> list[tuple]:
    """rollup_rows for rows in step order, epochs in any order: a row per run of rows
    sharing an epoch and a stretch."""
    out, start, n = [], 0, len(rows)
    while start < n:
        first = rows[start]
        epoch, stretch = first[3], (first[2] - 1) // ROLLUP_STEPS
        end = start + 1
        while (end < n and rows[end][3] == epoch
               and (rows[end][2] - 1) // ROLLUP_STEPS == stretch):
            end += 1
        columns = list(zip(*rows[start:end]))
        out.append((first[0], first[1], first[2], columns[2][-1], epoch, end - start,
                    *_summary(columns[4], columns[5]), *_summary(columns[6], columns[7]),
                    *_summary(columns[8], columns[9])))
        start = end
    return out


def _summary(values: tuple, nan_flags: tuple | None) -> tuple:
    if None not in values:
        total = sum(values)
        if math.isfinite(total):  # the common case: every value finite
            return len(values), total, min(values), max(values), 0
    finite = [v for v in values if v is not None and math.isfinite(v)]
    bad = sum(1 for i, v in enumerate(values) if (nan_flags is not None and nan_flags[i])
              or (v is not None and not math.isfinite(v)))
    if not finite:
        return 0, None, None, None, bad
    return len(finite), sum(finite), min(finite), max(finite), bad


def _insert_rollups(conn, rows: list[tuple]) -> None:
    if rows:
        conn.exec_driver_sql(_insert_sql("step_rollups", _ROLLUP_COLUMNS, _mark(conn)), rows)


def _mark(conn) -> str:
    """The driver's positional parameter marker."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _insert_sql(table: str, columns: str, mark: str) -> str:
    """A positional INSERT of every column named in ``columns`` (comma-separated)."""
    count = len(columns.split(","))
    return f"INSERT INTO {table} ({columns}) VALUES ({', '.join([mark] * count)})"


def _claim_lost(run_id: str, segment: int) -> ClaimLostError:
    return ClaimLostError(f"run {run_id} was taken over by a later attempt while attempt "
                          f"{segment} (process {os.getpid()}) was running; this process "
                          "stopped without recording more")


def _latest_segment_columns():
    latest = (select(Segment).where(Segment.run_id == Run.run_id)
              .order_by(Segment.segment.desc()).limit(1))
    return (latest.with_only_columns(Segment.segment).scalar_subquery().label("segment"),
            latest.with_only_columns(Segment.pid).scalar_subquery().label("pid"),
            latest.with_only_columns(Segment.hostname).scalar_subquery().label("hostname"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_state(pid: int | None, hostname: str | None, heartbeat: datetime,
                 now: datetime | None = None) -> str:
    """Whether the process of a running attempt is 'running', 'crashed' or 'stale'.

    'crashed': its process was on this host and is gone (kill -9, OOM killer);
    'stale': its heartbeat stopped (another host, or a hung process); else 'running'.
    """
    if hostname == socket.gethostname() and pid and not _pid_alive(pid):
        return "crashed"
    if (now or utcnow()) - heartbeat > STALE_AFTER:
        return "stale"
    return "running"


def live_status(run: dict[str, Any], now: datetime | None = None) -> str:
    """The status to show for a run: its stored status, or for 'running' whether its
    process is still there (see holder_state)."""
    if run["status"] != "running":
        return run["status"]
    return holder_state(run.get("pid"), run.get("hostname"),
                        run.get("heartbeat_at") or run["created_at"], now)


def _decode_run(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("config", "dataset_stats", "vocab", "extra"):
        if row.get(key) is not None:
            row[key] = json.loads(row[key])
    row["display_status"] = live_status(row)
    return row
