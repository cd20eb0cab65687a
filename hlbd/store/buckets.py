"""Reads for charting runs of any length: step series downsampled into buckets, and the
spans, segment times and grad-norm extremes the charts need.

Everything here takes a read engine (``hlbd.store.connect.read_engine``) and returns plain
dicts. Step series are downsampled in the database into buckets of ``width``
consecutive steps on one grid for every run (bucket ``b`` holds steps ``b * width + 1``
to ``(b + 1) * width``), so the runs of a chart line up at the same x. Each bucket keeps
its mean, min and max, so a one-step spike in 100,000 steps survives. Long runs are read
from ``step_rollups`` (steps summarised as they were written, ``hlbd.store.ROLLUP_STEPS``
to a row), short ones from ``steps`` itself; both give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, bindparam, select, text

from hlbd.store.rows import ROLLUP_STEPS, STEP_SERIES, rollup_sql
from hlbd.store.tables import Segment

DEFAULT_MAX_POINTS = 1000

# One row per bucket: run, bucket, its first and last step present, epochs, segments,
# the number of steps, then per metric: finite count, sum, min, max and NaN/Inf count.
_FROM_STEPS = f"""
SELECT run_id, (step - 1) / :width AS bucket, MIN(step), MAX(step), MIN(epoch), MAX(epoch),
       MIN(segment), MAX(segment), COUNT(*), {rollup_sql("steps")}
FROM steps WHERE run_id IN :run_ids AND superseded_by IS NULL
  AND step BETWEEN :low AND :high
GROUP BY run_id, bucket
"""
_FROM_ROLLUPS = f"""
SELECT run_id, (first_step - 1) / :width AS bucket, MIN(first_step), MAX(last_step),
       MIN(epoch), MAX(epoch), MIN(segment), MAX(segment), SUM(steps), {rollup_sql("step_rollups")}
FROM step_rollups WHERE run_id IN :run_ids AND superseded_by IS NULL
  AND first_step BETWEEN :low AND :high
GROUP BY run_id, bucket
"""
_HEAD = ("run_id", "bucket", "first_step", "last_step", "epoch", "last_epoch", "segment",
         "last_segment", "steps")
# The fields of each bucket step_buckets returns, in order.
BUCKET_FIELDS = ("run_id", "step", "width", "first_step", "last_step", "epoch", "last_epoch",
                 "segment", "last_segment", "steps",
                 *(f"{metric}{part}" for metric in STEP_SERIES
                   for part in ("", "_min", "_max", "_nonfinite")))


def bucket_width(last_step: int, max_points: int = DEFAULT_MAX_POINTS) -> int:
    """The bucket width that shows steps 1..``last_step`` in at most ``max_points`` buckets.

    1 (every step) for short runs; from ROLLUP_STEPS steps up a multiple of it, so a
    bucket is read from whole rows of ``step_rollups``.
    """
    width = max(1, math.ceil(max(last_step, 1) / max(1, int(max_points))))
    if width >= ROLLUP_STEPS // 2:
        width = math.ceil(width / ROLLUP_STEPS) * ROLLUP_STEPS
    return width


def step_buckets(engine: Engine, run_ids: Sequence[str],
                 max_points: int = DEFAULT_MAX_POINTS, *,
                 width: int | None = None, steps: tuple[int, int] | None = None,
                 source: str | None = None) -> list[dict[str, Any]]:
    """The effective steps of ``run_ids`` in buckets of ``width`` consecutive steps.

    ``width`` defaults to ``bucket_width`` of the runs' last step and ``max_points``.
    Per bucket: ``step`` (its first step on the grid, ``bucket * width + 1``),
    ``width``, ``first_step``/``last_step`` present, ``epoch``/``last_epoch``,
    ``segment``/``last_segment``, ``steps`` (rows in it) and per metric (loss,
    grad_norm, lr) the mean, ``_min`` and ``_max`` of its finite values and ``_nonfinite``,
    the steps whose value was NaN or Inf: those are never averaged in. A mean of None:
    no finite value (not recorded, or all NaN/Inf: the count tells). Rows in
    (run_id, step) order. ``steps`` (first, last): only the buckets that hold steps of
    that range. ``source`` ("steps" or "rollups") forces where they are read from; by
    default rollups from ROLLUP_STEPS wide buckets up.
    """
    if not run_ids:
        return []
    if width is None:
        spans = step_spans(engine, run_ids)
        width = bucket_width(max((s["last_step"] for s in spans.values()), default=1),
                             max_points)
    source = source or ("rollups" if width % ROLLUP_STEPS == 0 else "steps")
    sql = text(_FROM_ROLLUPS if source == "rollups" else _FROM_STEPS).bindparams(
        bindparam("run_ids", expanding=True))
    low, high = steps or (1, 2**62)
    low = (max(1, int(low)) - 1) // width * width + 1
    high = ((max(low, int(high)) - 1) // width + 1) * width
    with engine.connect() as conn:
        rows = conn.execute(sql, {"run_ids": list(run_ids), "inf": math.inf,
                                  "width": int(width), "low": low, "high": high}).all()
    buckets = []
    for row in rows:
        head = dict(zip(_HEAD, row[:len(_HEAD)]))
        bucket = {"run_id": head["run_id"], "step": head["bucket"] * width + 1,
                  "width": width}
        bucket.update((k, head[k]) for k in _HEAD[2:])
        for i, metric in enumerate(STEP_SERIES):
            count, total, low, high, bad = row[len(_HEAD) + 5 * i:len(_HEAD) + 5 * i + 5]
            count = int(count or 0)
            bucket[metric] = total / count if count else None
            bucket[f"{metric}_min"] = low if count else None
            bucket[f"{metric}_max"] = high if count else None
            bucket[f"{metric}_nonfinite"] = int(bad or 0)
        buckets.append(bucket)
    buckets.sort(key=lambda b: (b["run_id"], b["step"]))
    return buckets


def step_spans(engine: Engine, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per run with effective steps: ``first_step``, ``last_step`` and ``steps`` (count)."""
    if not run_ids:
        return {}
    sql = text("SELECT run_id, MIN(first_step), MAX(last_step), SUM(steps) FROM step_rollups "
               "WHERE run_id IN :run_ids AND superseded_by IS NULL GROUP BY run_id"
               ).bindparams(bindparam("run_ids", expanding=True))
    with engine.connect() as conn:
        rows = conn.execute(sql, {"run_ids": list(run_ids)}).all()
    return {run_id: {"first_step": first, "last_step": last, "steps": int(count)}
            for run_id, first, last, count in rows}


def segment_times(engine: Engine) -> dict[str, list[tuple]]:
    """Per run: (segment, started_at, ended_at) of each segment, in order."""
    query = select(Segment.run_id, Segment.segment, Segment.started_at,
                   Segment.ended_at).order_by(Segment.run_id, Segment.segment)
    out: dict[str, list[tuple]] = {}
    with engine.connect() as conn:
        for run_id, segment, started, ended in conn.execute(query):
            out.setdefault(run_id, []).append((segment, started, ended))
    return out


def epoch_steps(engine: Engine, run_id: str) -> list[dict[str, int]]:
    """The effective steps each epoch of ``run_id`` covers: epoch, segment, first and
    last step, in epoch order (epochs without step records are absent)."""
    sql = text("SELECT epoch, segment, MIN(first_step), MAX(last_step) FROM step_rollups "
               "WHERE run_id = :run_id AND superseded_by IS NULL GROUP BY epoch, segment "
               "ORDER BY epoch")
    with engine.connect() as conn:
        rows = conn.execute(sql, {"run_id": run_id}).all()
    return [{"epoch": epoch, "segment": segment, "first_step": first, "last_step": last}
            for epoch, segment, first, last in rows]


def grad_norm_extremes(engine: Engine) -> dict[str, dict[str, Any]]:
    """Per run: the largest recorded grad norm and how many steps had a NaN/Inf one.

    ``max_grad_norm`` is the largest of the effective epochs' ``grad_norm_max`` (and of
    ``grad_norm`` for records that kept only one value per epoch); None: not recorded.
    """
    sql = text("SELECT run_id, MAX(grad_norm_max), MAX(grad_norm), SUM(nonfinite_steps) "
               "FROM epoch_metrics GROUP BY run_id")
    with engine.connect() as conn:
        rows = conn.execute(sql).all()
    out = {}
    for run_id, top, mean_top, nonfinite in rows:
        recorded = [v for v in (top, mean_top) if v is not None]
        out[run_id] = {"max_grad_norm": max(recorded) if recorded else None,
                       "nonfinite_steps": nonfinite}
    return out

