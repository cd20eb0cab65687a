"""How measured values become store rows and back: timestamps, NaN flags, step columns
and step rollups.

The per-step series of ``hlbd train`` (STEP_SERIES) are columns of ``steps``, each with
an ``*_is_nan`` flag: SQLite turns NaN into NULL, so NULL with the flag set is a measured
NaN and NULL without it a value not recorded. ``step_rollups`` summarises ROLLUP_STEPS
consecutive steps of one epoch as they are written (count, sum, min, max of the finite
values and the number of NaN/Inf ones, ROLLUP_PARTS); ``rollup_sql`` states the same rule
in SQL for the explorer's reads, and a test holds the two equal.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

# The series hlbd train records per optimizer step, in the column order of ``steps``.
STEP_SERIES = ("loss", "grad_norm", "lr")
# The steps columns in the order of the rows step_columns builds (a COPY names them).
STEP_COLUMNS = "run_id, segment, step, epoch, " + ", ".join(
    f"{series}, {series}_is_nan" for series in STEP_SERIES)
# Columns stored with an ``*_is_nan`` flag beside them, per table.
NAN_FLAGGED = {"epochs": STEP_SERIES, "steps": STEP_SERIES, "anomalies": ("value",),
               "points": ("value",), "evaluations": ("value",)}
# The points columns in the order of the rows point_rows builds.
POINT_COLUMNS = "run_id, segment, key, scope, step, epoch, value, value_is_nan"
# Steps per row of step_rollups (the explorer reads long runs from there, see
# hlbd.store.buckets); migration 0003 filled it for steps recorded before it existed.
ROLLUP_STEPS = 32
# What a rollup keeps per series, and the SQL aggregate that combines rollups into a
# longer stretch: finite count, sum, min, max, and the count of NaN/Inf values.
ROLLUP_PARTS = {"count": "SUM", "sum": "SUM", "min": "MIN", "max": "MAX", "nonfinite": "SUM"}
ROLLUP_COLUMNS = "run_id, segment, first_step, last_step, epoch, steps, " + ", ".join(
    f"{series}_{part}" for series in STEP_SERIES for part in ROLLUP_PARTS)


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


def join_nans(row: dict, table: str) -> dict:
    """``row`` of ``table`` with each NaN-flagged column back in its measured form."""
    for column in NAN_FLAGGED[table]:
        row[column] = join_nan(row[column], bool(row.pop(f"{column}_is_nan")))
    return row


def epoch_values(run_id: str, segment: int, epoch: dict[str, Any],
                 recorded_at: datetime | None) -> dict[str, Any]:
    """The epochs row of one epoch's values (NaN split into value and flag)."""
    values = {**epoch, "run_id": run_id, "segment": segment, "recorded_at": recorded_at}
    for column in NAN_FLAGGED["epochs"]:
        values[column], values[f"{column}_is_nan"] = split_nan(epoch.get(column))
    return values


def process_columns(hosts: Sequence[str] | None) -> dict[str, Any]:
    """A segment's world size and hosts columns (NULL when not known: an import)."""
    if not hosts:
        return {"world_size": None, "hosts": None}
    return {"world_size": len(hosts), "hosts": json.dumps(list(hosts))}


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
    for name in STEP_SERIES:
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


def point_rows(run_id: str, segment: int,
               points: Iterable[tuple[str, str, int, int, float]]) -> list[tuple]:
    """The points rows (POINT_COLUMNS' order) of ``(key, scope, step, epoch, value)``s."""
    return [(run_id, segment, key, scope, step, epoch, *split_nan(value))
            for key, scope, step, epoch, value in points]


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
    metrics = _series_columns(columns)
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


def _series_columns(columns: Sequence[Sequence]) -> list[tuple[Sequence, Sequence]]:
    """(values, NaN flags) per series of steps rows' columns (STEP_COLUMNS' order)."""
    return [(columns[4 + 2 * i], columns[5 + 2 * i]) for i in range(len(STEP_SERIES))]


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
                    *itertools.chain.from_iterable(
                        _summary(values, flags) for values, flags in _series_columns(columns))))
        start = end
    return out


def _summary(values: Sequence, nan_flags: Sequence | None) -> tuple:
    """One series' ROLLUP_PARTS over ``values`` (None: not recorded, in neither count)."""
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


def _finite(column: str) -> str:
    return f"CASE WHEN {column} > -:inf AND {column} < :inf THEN {column} END"


def rollup_sql(source: str) -> str:
    """SQL aggregates, ROLLUP_PARTS per STEP_SERIES, over rows of ``source``.

    ``steps``: the rollup rule of ``rollup_rows`` over raw steps; ``step_rollups``: the
    rollups of a longer stretch combined from shorter ones. Binds ``:inf`` (a float
    infinity: SQLite and PostgreSQL both compare with it).
    """
    parts = []
    for series in STEP_SERIES:
        if source == "step_rollups":
            parts += [f"{how}({series}_{part})" for part, how in ROLLUP_PARTS.items()]
            continue
        finite = _finite(series)
        parts += [f"COUNT({finite})", f"SUM({finite})", f"MIN({finite})", f"MAX({finite})",
                  (f"SUM(CASE WHEN {series}_is_nan OR {series} >= :inf OR {series} <= -:inf "
                   "THEN 1 ELSE 0 END)")]
    return ", ".join(parts)


def mark(conn) -> str:
    """The driver's positional parameter marker."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def insert_sql(table: str, columns: str, mark: str) -> str:
    """A positional INSERT of every column named in ``columns`` (comma-separated)."""
    count = len(columns.split(","))
    return f"INSERT INTO {table} ({columns}) VALUES ({', '.join([mark] * count)})"
