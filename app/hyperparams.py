"""What the Hyperparameters page shows, as plain functions: the exact-match values of
runs at their best and last evaluated epochs, runs' numeric config and summaries as rows
for the parallel-coordinates chart and the scatter, and which runs a brush covers."""

from __future__ import annotations

import math
import re

EXACT = "val/exact"
# A run's summaries the charts can use, by the runs-list field that holds each.
SUMMARIES = {"best val loss": "best_val_loss", "best loss": "best_loss",
             "last loss": "last_loss", "best exact match": "best_exact",
             "epochs": "epochs"}


def exact_keys(keys) -> list[str]:
    """The exact-match names among ``keys``: overall first, then per module by name,
    then per level by number (level_2 before level_10)."""
    parts = [k for k in keys if k.startswith(EXACT + "/")]

    def order(key: str):
        part = key.removeprefix(EXACT + "/")
        level = re.fullmatch(r"level_(\d+)", part)
        return (1, int(level.group(1)), part) if level else (0, 0, part)

    return ([EXACT] if EXACT in keys else []) + sorted(parts, key=order)


def best_epoch(val_losses: dict[int, float]) -> int | None:
    """The epoch with the lowest finite val_loss (the earliest of equals); None: none."""
    finite = [(v, e) for e, v in val_losses.items() if v is not None and math.isfinite(v)]
    return min(finite)[1] if finite else None


def last_evaluated(values: dict[str, dict[int, float]]) -> int | None:
    """The last epoch at which any of ``values`` (name -> epoch -> value) was recorded."""
    return max((e for by_epoch in values.values() for e in by_epoch), default=None)


def numeric_config(config: dict | None, prefix: str = "") -> dict[str, float]:
    """The config's numbers (nested keys joined by "/": split/fraction), booleans and
    text left out; None (not set) is left out too."""
    out: dict[str, float] = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numeric_config(value, name + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def varying(rows: list[dict[str, float]]) -> list[str]:
    """The keys whose value is not the same in every row that has them (in first-seen
    order): an axis every run shares says nothing."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [k for k in keys if len({r[k] for r in rows if k in r
                                    and not math.isnan(r[k])}) > 1]


def parallel_rows(values: dict[str, dict[str, float | None]], axes: list[str]) -> list[dict]:
    """One row per run and axis: ``value`` as recorded and ``norm``, its place between
    the axis' lowest (0) and highest (1) finite value (0.5 when they are equal). A value
    not recorded, NaN or Inf has no place (norm None: the line breaks there)."""
    rows = []
    for axis in axes:
        finite = [v[axis] for v in values.values()
                  if v.get(axis) is not None and math.isfinite(v[axis])]
        low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
        for run, v in values.items():
            value = v.get(axis)
            placed = value is not None and math.isfinite(value)
            norm = ((value - low) / (high - low) if high > low else 0.5) if placed else None
            rows.append({"run": run, "axis": axis, "value": value, "norm": norm})
    return rows


def value_range(rows: list[dict], axis: str) -> str:
    """An axis' lowest to highest finite value as text (parallel_rows' rows)."""
    finite = [r["value"] for r in rows if r["axis"] == axis and r["norm"] is not None]
    if not finite:
        return "not recorded"
    low, high = min(finite), max(finite)
    return f"{low:.4g}" if low == high else f"{low:.4g} to {high:.4g}"


def brushed(selection: dict | None, rows: list[dict]) -> list[str]:
    """The runs a brush covers, in the order of ``rows`` (dicts with a ``run`` field).

    ``selection``: an interval selection as Streamlit returns it, field -> [low, high]
    for a continuous field, field -> the values covered for a discrete one (the
    parallel-coordinates chart's ``axis``). A run is covered when one of its rows
    lies inside on every field the selection names."""
    if not selection:
        return []

    def inside(row: dict) -> bool:
        for field, span in selection.items():
            value = row.get(field)
            if value is None:
                return False
            if isinstance(value, str):
                if value not in span:
                    return False
            elif not (isinstance(value, int | float) and len(span) == 2
                      and min(span) <= value <= max(span)):
                return False
        return True

    return list(dict.fromkeys(r["run"] for r in rows if inside(r)))
