"""The store's reads: runs, their segments, epochs, steps, checkpoints and anomaly flags,
as plain dicts (never ORM objects), the effective history unless asked otherwise."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import aliased

from hlbd.errors import UnknownRunError
from hlbd.store import history
from hlbd.store.claims import live_status
from hlbd.store.rows import STEP_SERIES, join_nan, join_nans, mark
from hlbd.store.tables import Anomaly, Checkpoint, Epoch, Evaluation, Point, Run, Segment

# Reads.steps' columns, in the order it unpacks them.
_STEPS_READ = ("SELECT segment, step, epoch, "
               + ", ".join(f"{series}, {series}_is_nan" for series in STEP_SERIES)
               + ", superseded_by FROM steps")


class Reads:
    """The read half of Store (``self.engine``, ``self.url``)."""

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
        """All runs, newest first, with epoch count, last and best loss, live status.

        ``last_loss``: the last effective epoch's loss (NaN when it measured NaN);
        ``best_loss``: the lowest finite epoch loss, NaN when every epoch's was NaN/Inf,
        None when the run has no epochs. ``best_val_loss``, ``best_exact``: the lowest
        finite epoch ``val_loss`` and the highest ``val/exact`` it recorded (None: none).
        """
        effective = Epoch.superseded_by.is_(None)
        finite = case((and_(Epoch.loss > -math.inf, Epoch.loss < math.inf), Epoch.loss))
        agg = (select(Epoch.run_id, func.count().label("epochs"),
                      func.min(finite).label("best_loss"),
                      func.max(Epoch.epoch).label("last_epoch"))
               .where(effective).group_by(Epoch.run_id).subquery())
        last = aliased(Epoch)
        held_out = (select(Point.run_id,
                           func.min(case((and_(Point.key == "val_loss", Point.value > -math.inf,
                                               Point.value < math.inf), Point.value)))
                           .label("best_val_loss"),
                           func.max(case((Point.key == "val/exact", Point.value)))
                           .label("best_exact"))
                    .where(Point.scope == "epoch", Point.superseded_by.is_(None),
                           Point.key.in_(("val_loss", "val/exact")))
                    .group_by(Point.run_id).subquery())
        query = (select(Run, func.coalesce(agg.c.epochs, 0).label("epochs"),
                        agg.c.best_loss, last.loss.label("last_loss"),
                        last.loss_is_nan.label("last_loss_is_nan"),
                        held_out.c.best_val_loss, held_out.c.best_exact,
                        *_latest_segment_columns())
                 .outerjoin(agg, agg.c.run_id == Run.run_id)
                 .outerjoin(held_out, held_out.c.run_id == Run.run_id)
                 .outerjoin(last, and_(last.run_id == Run.run_id,
                                       last.epoch == agg.c.last_epoch,
                                       last.superseded_by.is_(None)))
                 .order_by(Run.created_at.desc()))
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for r in rows:
            r["last_loss"] = join_nan(r["last_loss"], bool(r.pop("last_loss_is_nan")))
            if r["best_loss"] is None and r["epochs"]:
                r["best_loss"] = math.nan
        return [_decode_run(r) for r in rows]

    def change_marks(self) -> tuple:
        """What changes whenever any run is written: the number of runs, segments and
        epochs, the newest run, heartbeat, finish and epoch times, how many runs have
        each status, how many held-out values (``val_loss``, ``val/exact``) are in effect,
        and a digest of every run's tags and notes (which change without a time). Equal
        marks: what list_runs returns is the same, except the live status of a running
        run, which ages (live_status). A few aggregates: cheap to ask every few seconds."""
        with self.engine.connect() as conn:
            runs = conn.execute(select(func.count(), func.max(Run.created_at),
                                       func.max(Run.heartbeat_at),
                                       func.max(Run.finished_at))).one()
            statuses = conn.execute(select(Run.status, func.count()).group_by(Run.status)
                                    .order_by(Run.status)).all()
            segments = conn.execute(select(func.count()).select_from(Segment)).scalar()
            epochs = conn.execute(select(func.count(), func.max(Epoch.recorded_at))).one()
            held_out = conn.execute(select(func.count()).select_from(Point).where(
                Point.scope == "epoch", Point.superseded_by.is_(None),
                Point.key.in_(("val_loss", "val/exact")))).scalar()
            said = conn.execute(select(Run.run_id, Run.tags, Run.notes)
                                .where((Run.tags.is_not(None)) | (Run.notes.is_not(None)))
                                .order_by(Run.run_id)).all()
        digest = hashlib.sha256(json.dumps([list(r) for r in said]).encode()).hexdigest()
        return (*runs, tuple(map(tuple, statuses)), segments, *epochs, held_out, digest)

    def effective_epochs(self, run_ids: Sequence[str]) -> dict[str, list[dict]]:
        """The effective epochs of several runs (as ``epochs`` returns them), by run, in
        a query per 500 runs rather than one per run."""
        out: dict[str, list[dict]] = {run_id: [] for run_id in run_ids}
        with self.engine.connect() as conn:
            for part in _parts(list(out)):
                query = (select(Epoch).where(Epoch.run_id.in_(part),
                                             Epoch.superseded_by.is_(None))
                         .order_by(Epoch.run_id, Epoch.epoch, Epoch.segment))
                for r in conn.execute(query).mappings():
                    out[r["run_id"]].append(join_nans(dict(r), "epochs"))
        return out

    def epoch_values_of(self, run_ids: Sequence[str], key: str) -> dict[str, dict[int, float]]:
        """``epoch_values(run_id, key)`` of several runs, by run, read together."""
        out: dict[str, dict[int, float]] = {run_id: {} for run_id in run_ids}
        with self.engine.connect() as conn:
            for part in _parts(list(out)):
                query = select(Point.run_id, Point.epoch, Point.value, Point.value_is_nan).where(
                    Point.run_id.in_(part), Point.key == key, Point.scope == "epoch",
                    Point.superseded_by.is_(None))
                for run_id, epoch, value, is_nan in conn.execute(query):
                    out[run_id][epoch] = join_nan(value, bool(is_nan))
        return out

    def epochs(self, run_id: str, *, include_superseded: bool = False) -> list[dict]:
        """Per-epoch rows of a run in epoch order (effective history unless asked)."""
        query = select(Epoch).where(Epoch.run_id == run_id)
        if not include_superseded:
            query = query.where(Epoch.superseded_by.is_(None))
        query = query.order_by(Epoch.epoch, Epoch.segment)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        return [join_nans(r, "epochs") for r in rows]

    def steps(self, run_id: str, *, include_superseded: bool = False,
              epochs: Sequence[int] | None = None) -> list[dict]:
        """Per-step rows of a run in step order (only those of ``epochs`` when given).

        Each row: run_id, segment, step, epoch, loss, grad_norm, lr (NaN for a measured
        NaN, None for a value not recorded) and superseded_by.
        """
        with self.engine.connect() as conn:
            marker = mark(conn)
            sql, params = f"{_STEPS_READ} WHERE run_id = {marker}", [run_id]
            if epochs is not None:
                epochs = list(epochs)
                if not epochs:
                    return []
                sql += f" AND epoch IN ({', '.join([marker] * len(epochs))})"
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

    def points(self, run_id: str, key: str | None = None, *,
               include_superseded: bool = False) -> list[dict]:
        """The values ``run_id`` logged under names of its own (hlbd.Run), in key, scope
        and step order (only ``key``'s when given). Each row: run_id, segment, key,
        scope ('step' or 'epoch'), step, epoch, value (NaN for a measured NaN) and
        superseded_by. The steps' own series (loss, grad_norm, lr) are in ``steps``;
        the view ``metric_points`` has both."""
        with self.engine.connect() as conn:
            marker = mark(conn)
            sql = ("SELECT segment, key, scope, step, epoch, value, value_is_nan, "
                   f"superseded_by FROM points WHERE run_id = {marker}")
            params = [run_id]
            if key is not None:
                sql, params = f"{sql} AND key = {marker}", [*params, key]
            if not include_superseded:
                sql += " AND superseded_by IS NULL"
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(f"{sql} ORDER BY key, scope, step, segment, epoch", params)
                rows = cursor.fetchall()
            finally:
                cursor.close()
        nan = math.nan
        return [{"run_id": run_id, "segment": segment, "key": name, "scope": scope,
                 "step": step, "epoch": epoch, "value": nan if is_nan else value,
                 "superseded_by": superseded_by}
                for segment, name, scope, step, epoch, value, is_nan, superseded_by in rows]

    def epoch_values(self, run_id: str, key: str) -> dict[int, float]:
        """The epoch values of ``key`` (``val_loss`` ...) on the effective history, by
        epoch (NaN for a measured NaN)."""
        return {p["epoch"]: p["value"] for p in self.points(run_id, key)
                if p["scope"] == "epoch"}

    def series(self, run_id: str, key: str, scope: str = "step") -> list[tuple[int, float]]:
        """One name's values on the effective history as (step, value) in step order
        (NaN for a measured NaN): the lean read for a chart. ``loss``, ``grad_norm`` and
        ``lr`` are in ``steps``; ask ``steps`` for them."""
        with self.engine.connect() as conn:
            marker = mark(conn)
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(
                    "SELECT step, value, value_is_nan FROM points WHERE run_id = "
                    f"{marker} AND key = {marker} AND scope = {marker} "
                    "AND superseded_by IS NULL ORDER BY step", (run_id, key, scope))
                rows = cursor.fetchall()
            finally:
                cursor.close()
        nan = math.nan
        return [(step, nan if is_nan else value) for step, value, is_nan in rows]

    def point_series(self, run_id: str) -> list[dict]:
        """The names ``run_id`` logged of its own (effective history), each with its
        scope, number of values and first and last step, in name order."""
        query = (select(Point.key, Point.scope, func.count().label("values"),
                        func.min(Point.step).label("first_step"),
                        func.max(Point.step).label("last_step"))
                 .where(Point.run_id == run_id, Point.superseded_by.is_(None))
                 .group_by(Point.key, Point.scope).order_by(Point.key, Point.scope))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def segments(self, run_id: str) -> list[dict]:
        """A run's segments in order; ``hosts`` decoded (a list in rank order, or None)."""
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
        """The checkpoints ``run_id`` could resume from, newest first (see
        hlbd.store.history.checkpoint_candidates)."""
        return history.checkpoint_candidates(self.segments(run_id), self.checkpoints(run_id))

    def evaluations(self, run_id: str) -> list[dict]:
        """``hlbd eval``'s evaluations of ``run_id``, oldest first: each with its
        checkpoint, dataset, sizes, time and ``values`` by name (NaN as measured)."""
        with self.engine.connect() as conn:
            rows = [join_nans(dict(r), "evaluations") for r in conn.execute(
                select(Evaluation).where(Evaluation.run_id == run_id)
                .order_by(Evaluation.evaluated_at, Evaluation.key)).mappings()]
        evaluations: dict[tuple, dict] = {}
        for row in rows:
            identity = (row["checkpoint_sha256"], row["dataset_sha256"], row["exact_pairs"])
            key, value = row.pop("key"), row.pop("value")
            evaluations.setdefault(identity, {**row, "values": {}})["values"][key] = value
        return list(evaluations.values())

    def anomalies(self, run_id: str | None = None, *,
                  include_superseded: bool = False) -> list[dict]:
        """Flags raised while training (the effective history's, unless asked)."""
        query = select(Anomaly).order_by(Anomaly.run_id, Anomaly.id)
        if run_id is not None:
            query = query.where(Anomaly.run_id == run_id)
        if not include_superseded:
            query = query.where(Anomaly.superseded_by.is_(None))
        with self.engine.connect() as conn:
            return [join_nans(dict(r), "anomalies") for r in conn.execute(query).mappings()]


def _parts(items: list, size: int = 500) -> list[list]:
    """``items`` in slices of ``size`` (a bound parameter each, below every driver's
    limit)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def _latest_segment_columns():
    latest = (select(Segment).where(Segment.run_id == Run.run_id)
              .order_by(Segment.segment.desc()).limit(1))
    return (latest.with_only_columns(Segment.segment).scalar_subquery().label("segment"),
            latest.with_only_columns(Segment.pid).scalar_subquery().label("pid"),
            latest.with_only_columns(Segment.hostname).scalar_subquery().label("hostname"))


def _decode_run(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("config", "dataset_stats", "vocab", "extra"):
        if row.get(key) is not None:
            row[key] = json.loads(row[key])
    row["tags"] = json.loads(row["tags"]) if row.get("tags") else []
    row["display_status"] = live_status(row)
    return row
