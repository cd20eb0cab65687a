"""The store's writes: runs, segments, epochs, steps, checkpoints and anomaly flags.

Each write is one short transaction that first confirms the writing segment still holds
the run (hlbd.store.claims). Steps, the most frequent write, go through the driver's own
connection on SQLite (Writes._record_steps_sqlite) and through COPY on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import exc, insert, select, update

from hlbd.errors import ClaimLostError, InvalidTagError, RunClaimedError
from hlbd.store import claims, history
from hlbd.store.rows import (
    POINT_COLUMNS,
    ROLLUP_COLUMNS,
    STEP_COLUMNS,
    epoch_values,
    insert_sql,
    mark,
    point_rows,
    process_columns,
    rollup_rows,
    split_nan,
    step_columns,
    utcnow,
)
from hlbd.store.tables import Anomaly, Checkpoint, Epoch, Evaluation, Run, Segment

MAX_TAG = 64
MAX_NOTES = 10_000


def checked_tags(tags: Sequence[str]) -> list[str]:
    """``tags`` as stored: each a non-empty string of at most MAX_TAG printable
    characters without a comma (a link lists tags comma-separated), once each, in
    order; InvalidTagError naming the first that is not."""
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or len(tag) > MAX_TAG \
                or "," in tag or not tag.isprintable():
            raise InvalidTagError(f"a tag is a non-empty text of at most {MAX_TAG} printable "
                                  f"characters without a comma, not {tag!r}")
        if tag.strip() not in out:
            out.append(tag.strip())
    return out


class Writes:
    """The write half of Store (``self.engine``, ``self._claims``, ``self._time_to_db``)."""

    def create_run(self, name: str, config: dict, dataset_stats: dict, *,
                   vocab: Sequence[str] | None = None, run_dir: str | None = None,
                   source: str = "hlbd", source_hash: str | None = None,
                   extra: dict | None = None, status: str = "running",
                   run_id: str | None = None,
                   epochs: Sequence[dict[str, Any]] = (),
                   hosts: Sequence[str] | None = None,
                   tags: Sequence[str] = ()) -> str:
        """Insert a run and its first segment; returns the new run id.

        ``epochs`` are rows the run already has (an import): written as segment 1 in the
        same transaction, so an import is all there or not there at all. ``hosts``: the
        host of each training process, in rank order (the segment's world size).
        """
        run_id = run_id or uuid.uuid4().hex
        with self.engine.begin() as conn:
            insert_run(conn, run_id, utcnow(), name=name, status=status, config=config,
                        dataset_stats=dataset_stats, vocab=vocab, run_dir=run_dir,
                        source=source, source_hash=source_hash, extra=extra,
                        epochs=epochs, hosts=hosts)
            if tags:
                conn.execute(update(Run).where(Run.run_id == run_id).values(
                    tags=json.dumps(checked_tags(tags), ensure_ascii=False)))
        return run_id

    def tag(self, run_id: str, add: Sequence[str] = (),
            remove: Sequence[str] = ()) -> list[str]:
        """Add and remove tags of ``run_id`` (any time: tags are not its history);
        returns its tags. InvalidTagError for a tag that cannot be stored."""
        add, remove = checked_tags(add), set(remove)
        with self.engine.begin() as conn:
            stored = conn.scalar(select(Run.tags).where(Run.run_id == run_id))
            tags = [t for t in json.loads(stored or "[]") if t not in remove]
            tags += [t for t in add if t not in tags]
            conn.execute(update(Run).where(Run.run_id == run_id).values(
                tags=json.dumps(tags, ensure_ascii=False) if tags else None))
        return tags

    def note(self, run_id: str, text: str | None) -> None:
        """Set the notes of ``run_id`` (None or empty: none)."""
        if text is not None and len(text) > MAX_NOTES:
            raise InvalidTagError(f"a note is at most {MAX_NOTES} characters, not "
                                  f"{len(text)}")
        with self.engine.begin() as conn:
            conn.execute(update(Run).where(Run.run_id == run_id).values(
                notes=text or None))

    def begin_segment(self, run_id: str, start_epoch: int,
                      resumed_from: str | None = None, config: dict | None = None, *,
                      hosts: Sequence[str] | None = None, force: bool = False,
                      start_step: int | None = None) -> int:
        """Claim ``run_id`` and open a new segment that continues after ``start_epoch``
        (and ``start_step``, for a checkpoint taken mid-epoch: see hlbd.store.history).

        The claim is one transaction: a segment still marked running must be dead (its
        process gone from this host, or no heartbeat for STALE_AFTER; ``force`` skips
        that check) and is taken over by a compare-and-set that only one claimant can
        win; the new segment is inserted as running, which the unique index
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
                segment = claims.claim(conn, run_id, now, force, start_epoch, resumed_from,
                                       hosts, start_step)
                history.supersede_after(conn, run_id, start_epoch, segment, start_step)
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

    def record_epoch(self, run_id: str, segment: int, epoch: dict[str, Any],
                     steps: Sequence[dict[str, Any]] = (),
                     points: Sequence[tuple] = ()) -> None:
        """Write one epoch's row, its not yet written steps and points (``(key, scope,
        step, epoch, value)``) and a heartbeat, atomically.

        ``recorded_at`` is when the transaction holds the write lock, so a row that
        waited for another process's lock says when it really reached the store.
        """
        with self.engine.begin() as conn:
            now = utcnow()
            self._claims.confirm(conn, run_id, segment, now)
            self._insert_steps(conn, run_id, segment, steps)
            self._insert_points(conn, point_rows(run_id, segment, points))
            conn.execute(insert(Epoch), [epoch_values(run_id, segment, epoch, now)])

    def record_steps(self, run_id: str, segment: int, steps: Sequence[dict[str, Any]],
                     points: Sequence[tuple] = ()) -> None:
        """Write a batch of optimizer steps and points (``(key, scope, step, epoch,
        value)``), and refresh the heartbeat, in one transaction."""
        if self.engine.dialect.name == "sqlite":
            self._record_steps_sqlite(run_id, segment, steps, point_rows(run_id, segment,
                                                                          points))
            return
        with self.engine.begin() as conn:
            self._claims.confirm(conn, run_id, segment, utcnow())
            self._insert_steps(conn, run_id, segment, steps)
            self._insert_points(conn, point_rows(run_id, segment, points))

    def _record_steps_sqlite(self, run_id: str, segment: int,
                             steps: Sequence[dict[str, Any]], points: list[tuple]) -> None:
        """record_steps on SQLite, through the driver's connection from the engine's pool.

        The most frequent write: SQLAlchemy's execution layer cost about 0.1 ms a
        transaction, more than SQLite's own work for a trainer's batch of a few hundred
        steps. The same statements, lock (BEGIN IMMEDIATE) and claim check as
        Claims.confirm and _insert_steps; a driver error is raised as SQLAlchemy's, as any other write's.
        """
        columns = step_columns(run_id, segment, steps)
        inserts = []
        if columns is not None:
            inserts += [(insert_sql("steps", STEP_COLUMNS, "?"), list(zip(*columns))),
                        (insert_sql("step_rollups", ROLLUP_COLUMNS, "?"),
                         rollup_rows(columns))]
        if points:
            inserts.append((insert_sql("points", POINT_COLUMNS, "?"), points))
        connection = self.engine.raw_connection()
        statement, params = "BEGIN IMMEDIATE", ()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(statement)
                statement, params = claims.CONFIRM_READ, (run_id, segment)
                if len(cursor.execute(statement, params).fetchall()) != 1:
                    raise claims.claim_lost(run_id, segment)
                if self._claims.beat_due(run_id, segment):
                    statement = "UPDATE runs SET heartbeat_at = ? WHERE run_id = ?"
                    params = (self._time_to_db(utcnow()), run_id)
                    cursor.execute(statement, params)
                for statement, params in inserts:
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
        _insert_rows(conn, "steps", STEP_COLUMNS, list(zip(*columns)))
        _insert_rollups(conn, rollup_rows(columns))

    @staticmethod
    def _insert_points(conn, rows: list[tuple]) -> None:
        if rows:
            _insert_rows(conn, "points", POINT_COLUMNS, rows)

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
                insert_run(conn, run_id, now, name=run["name"], status="imported",
                            config={}, dataset_stats=run["dataset_stats"],
                            source="imported", source_hash=run["source_hash"],
                            extra=run["extra"], epochs=run["epochs"])
                self._insert_steps(conn, run_id, 1, run["steps"])
                outcomes.append((run_id, "imported"))
        return outcomes

    def heartbeat(self, run_id: str, segment: int) -> None:
        """Say segment ``segment`` of ``run_id`` is alive (ClaimLostError if taken over)."""
        with self.engine.begin() as conn:
            self._claims.confirm(conn, run_id, segment, utcnow(), beat=True)

    def record_checkpoint(self, run_id: str, segment: int, epoch: int, path: str,
                          size_bytes: int | None, step: int | None = None) -> None:
        with self.engine.begin() as conn:
            self._claims.confirm(conn, run_id, segment, utcnow())
            conn.execute(insert(Checkpoint).values(
                run_id=run_id, segment=segment, epoch=epoch, path=path,
                created_at=utcnow(), size_bytes=size_bytes, step=step))

    def record_evaluation(self, run_id: str, identity: dict[str, Any],
                          values: dict[str, float]) -> bool:
        """Record one evaluation of ``run_id`` (``identity``: the Evaluation columns
        other than key and value) with its ``values`` by name, in one transaction.
        Returns False, writing nothing, when the same evaluation (checkpoint bytes,
        dataset bytes, decoded pairs) is there already."""
        now = utcnow()
        rows = [{**identity, "run_id": run_id, "evaluated_at": now, "key": key,
                 **dict(zip(("value", "value_is_nan"), split_nan(value), strict=True))}
                for key, value in values.items()]
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(Evaluation), rows)
        except exc.IntegrityError:
            return False  # another process recorded the same evaluation first
        return True

    def mark_checkpoints_pruned(self, run_id: str, segment: int, ids: Sequence[int]) -> None:
        """Mark checkpoint rows ``ids`` of ``run_id`` as pruned (their files are about to
        be deleted), by segment ``segment``, which must still hold the run."""
        if not ids:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            self._claims.confirm(conn, run_id, segment, now)
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
            self._claims.confirm(conn, run_id, segment, now)
            conn.execute(insert(Anomaly), rows)

    def finish_run(self, run_id: str, segment: int, status: str,
                   error: str | None = None) -> bool:
        """Close the segment and set the run's status (finished/failed/interrupted).

        Returns False, writing nothing, when a later segment has taken the run over:
        the run's status is then that segment's to set.
        """
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                self._claims.confirm(conn, run_id, segment, now)
                conn.execute(update(Segment).where(Segment.run_id == run_id,
                                                   Segment.segment == segment)
                             .values(status=status, ended_at=now))
                conn.execute(update(Run).where(Run.run_id == run_id).values(
                    status=status, finished_at=now, error=error))
        except ClaimLostError:
            return False
        return True


def insert_run(conn, run_id: str, now: datetime, *, name: str, status: str, config: dict,
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
    # An import's segment ran elsewhere, in a process not known: not this one's.
    here = source != "imported"
    conn.execute(insert(Segment).values(
        run_id=run_id, segment=1, start_epoch=0, started_at=now, ended_at=ended,
        status=status, pid=os.getpid() if here else None,
        hostname=socket.gethostname() if here else None, **process_columns(hosts)))
    if epochs:
        # Rows recorded elsewhere: when each was recorded is not known (NULL).
        conn.execute(insert(Epoch), [epoch_values(run_id, 1, e, None) for e in epochs])


def _insert_rollups(conn, rows: list[tuple]) -> None:
    if rows:
        conn.exec_driver_sql(insert_sql("step_rollups", ROLLUP_COLUMNS, mark(conn)), rows)


def _insert_rows(conn, table: str, columns: str, rows: list[tuple]) -> None:
    """``rows`` (positional, in ``columns``' order) into ``table`` inside ``conn``'s
    transaction: COPY on PostgreSQL (several times faster than any INSERT there), a
    positional executemany elsewhere (the per-step path must stay close to raw sqlite3)."""
    if conn.dialect.driver == "psycopg":
        cursor = conn.connection.dbapi_connection.cursor()
        with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        conn.exec_driver_sql(insert_sql(table, columns, mark(conn)), rows)
