"""Reads for comparing runs: per-run grad-norm extremes, downsampled step series, config diffs.

Everything here takes a read engine (``hlbd.database.read_engine``) and returns plain
dicts. The step series is downsampled in the database, keeping each bucket's extremes,
so a one-step spike in 100,000 steps survives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, bindparam, text

DEFAULT_MAX_POINTS = 1000

# A bucket's numbers, in the order they come back.
_AGGREGATES = {
    "epoch": "MIN(epoch)", "last_epoch": "MAX(epoch)", "steps": "COUNT(*)",
    "loss": "AVG(loss)", "loss_min": "MIN(loss)", "loss_max": "MAX(loss)",
    "loss_nonfinite": "SUM(CASE WHEN loss_is_nan OR loss >= :inf THEN 1 ELSE 0 END)",
    "grad_norm": "AVG(grad_norm)", "grad_norm_min": "MIN(grad_norm)",
    "grad_norm_max": "MAX(grad_norm)",
    "grad_norm_nonfinite": "SUM(CASE WHEN grad_norm_is_nan OR grad_norm >= :inf "
                           "THEN 1 ELSE 0 END)",
    "lr": "AVG(lr)", "lr_min": "MIN(lr)", "lr_max": "MAX(lr)",
}
_MAY_BE_INF = ("loss", "loss_min", "loss_max", "grad_norm", "grad_norm_min", "grad_norm_max")

# One row per bucket of consecutive effective steps of one segment of a run. A bucket's
# numbers come from one correlated subquery over an index range: that reads each step
# once and never sorts, where a GROUP BY on a computed bucket sorts every step first
# (about twice as slow in SQLite). A scalar subquery returns one column, so the numbers
# travel packed: on SQLite as quote()d text, which round-trips a double exactly (its
# JSON keeps only 15 digits); on PostgreSQL as a JSON array.
_BUCKETS_SQL = """
WITH RECURSIVE
spans AS (
    SELECT g.run_id, g.segment,
           (SELECT MIN(step) FROM steps s WHERE s.run_id = g.run_id
              AND s.segment = g.segment AND s.superseded_by IS NULL) AS first_step,
           (SELECT MAX(step) FROM steps s WHERE s.run_id = g.run_id
              AND s.segment = g.segment AND s.superseded_by IS NULL) AS last_step
    FROM segments g WHERE g.run_id IN :run_ids
),
widths AS (
    SELECT run_id, (MAX(last_step) - MIN(first_step) + :max_points) / :max_points AS width
    FROM spans GROUP BY run_id
),
buckets (run_id, segment, lo, last_step, width) AS (
    SELECT p.run_id, p.segment, p.first_step, p.last_step, w.width
    FROM spans p JOIN widths w ON w.run_id = p.run_id WHERE p.first_step IS NOT NULL
    UNION ALL
    SELECT run_id, segment, lo + width, last_step, width FROM buckets
    WHERE lo + width <= last_step
)
SELECT b.run_id, b.segment, b.lo, b.width, (
    SELECT {packed} FROM steps s
    WHERE s.run_id = b.run_id AND s.segment = b.segment AND s.superseded_by IS NULL
      AND s.step >= b.lo AND s.step < b.lo + b.width
) AS numbers
FROM buckets b
"""


def step_buckets(engine: Engine, run_ids: Sequence[str],
                 max_points: int = DEFAULT_MAX_POINTS) -> list[dict[str, Any]]:
    """The effective steps of ``run_ids`` in at most about ``max_points`` buckets per run.

    A run's steps are cut into buckets of ``width`` consecutive steps starting at
    ``step``; the width is 1 when the run has no more than ``max_points`` steps, and then
    each bucket is exactly one step. Per bucket: ``epoch``/``last_epoch``, ``steps`` (rows
    in it), the mean, min and max of loss, grad norm and LR, and ``loss_nonfinite`` /
    ``grad_norm_nonfinite``, the steps whose value was NaN or Inf. NaN is never averaged
    in; an Inf makes the mean/max it reaches None, so no aggregate is ever Inf: the
    non-finite count tells. None also means not recorded. Rows in (run_id, step) order.
    """
    if not run_ids:
        return []
    sqlite = engine.dialect.name == "sqlite"
    packed = (" || ',' || ".join(f"quote({a})" for a in _AGGREGATES.values()) if sqlite
              else f"json_build_array({', '.join(_AGGREGATES.values())})")
    sql = text(_BUCKETS_SQL.format(packed=packed)).bindparams(
        bindparam("run_ids", expanding=True))
    with engine.connect() as conn:
        rows = conn.execute(sql, {"run_ids": list(run_ids), "inf": math.inf,
                                  "max_points": max(1, int(max_points))}).all()
    buckets = []
    for run_id, segment, lo, width, numbers in rows:
        values = ([None if v == "NULL" else float(v) for v in numbers.split(",")] if sqlite
                  else [None if v is None else float(v) for v in numbers])  # "Infinity"
        bucket = dict(zip(_AGGREGATES, values))
        if not bucket["steps"]:
            continue
        for key in ("epoch", "last_epoch", "steps", "loss_nonfinite", "grad_norm_nonfinite"):
            bucket[key] = int(bucket[key])
        for key in _MAY_BE_INF:
            if bucket[key] is not None and not math.isfinite(bucket[key]):
                bucket[key] = None
        buckets.append({"run_id": run_id, "segment": segment, "step": lo, "width": width,
                        **bucket})
    buckets.sort(key=lambda b: (b["run_id"], b["step"]))
    return buckets


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


def config_diff(configs: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The config keys whose values differ between runs: {key: {label: value}}.

    A key one run's config lacks is shown as None for it (it was not recorded).
    """
    keys = sorted({k for config in configs.values() for k in (config or {})})
    diff = {}
    for key in keys:
        values = {label: (config or {}).get(key) for label, config in configs.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            diff[key] = values
    return diff
