"""What the compare charts draw: the runs' records shaped into frames, one set per
metric, on the chosen x axis (epoch, optimizer step or wall time).

A value not recorded has no point; a NaN/Inf is a marker, never a number, and the line
breaks there; the smoothed value (TensorBoard's debiased EMA) sits beside the raw one, and
never for the LR; a downsampled bucket keeps its min and max; the robust y range leaves an
exploded run's points out and marks them on its edge. Built with pandas, column at a time:
20 runs x 1,000 points per chart is a few milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
import pandas as pd

from groups import Grouping, aggregate
from hlbd.store.rows import STEP_SERIES

STEP_METRICS = STEP_SERIES                     # recorded per optimizer step too
POINT = "p:"   # a chart of a name a run logged of its own (hlbd.Run, the integrations)
# The x axes a point can be placed on, with their titles; also any name a run logged
# of its own, as POINT + name (logged_x).
X_AXES = {"epoch": "epoch", "step": "step", "wall": "wall time"}
SMOOTHED = ("loss", "grad_norm")                # smoothing never touches the LR
# The robust y range: a run whose typical top (its values' 75th percentile) is more than
# OUTLIER_RATIO times the calmest run's has exploded, and so is any value more than
# OUTLIER_RATIO times the calm runs' typical top.
OUTLIER_RATIO = 10.0
TYPICAL_TOP = 0.75
# Charts the robust range leaves as they are: the LR is a setting, not a measurement
# that explodes (an exploding run's LR is what explains it), accuracy is bounded, and
# throughput differs between machines by design.
NOT_ROBUST = ("lr", "token_accuracy", "tokens_per_second")
# A training metric's held-out counterpart, recorded per epoch (hlbd train's evaluation,
# or a loop's run.end_epoch({"val_loss": ...})): drawn dashed on the training metric's
# chart, in the run's colour.
VALIDATION = {"loss": "val_loss", "token_accuracy": "val_token_accuracy"}


@dataclass
class RunSeries:
    """One run's records, as the explorer read them."""

    run_id: str
    label: str
    created_at: datetime
    epochs: list[dict]
    buckets: pd.DataFrame | None = None     # hlbd.compare.step_buckets, one run
    segments: list[dict] = field(default_factory=list)
    flags: list[dict] = field(default_factory=list)
    epoch_steps: list[dict] = field(default_factory=list)  # epoch -> its steps
    color: str = field(kw_only=True)    # its line's colour, from charts.colors()
    # Its own names' values (Store.points rows), for the charts of those picked: key ->
    # rows with scope, step, epoch, value.
    points: dict[str, list[dict]] = field(default_factory=dict, kw_only=True)


@dataclass
class MetricData:
    """Everything one metric's chart draws, as frames (column names as in the spec)."""

    metric: str
    points: pd.DataFrame      # run, x, value, lo, hi, smooth, piece
    hover: pd.DataFrame       # x, x_lo, x_hi, at, one column per run (v0, v1, ...)
    nonfinite: pd.DataFrame   # run, x, at, what
    clipped: pd.DataFrame     # run, x, at, what, edge (1 top, 0 bottom)
    flags: pd.DataFrame       # run, x, rule, message
    resumes: pd.DataFrame     # run, x, what
    missing: list[str]        # labels of runs that did not record it (on this axis)
    # The runs' held-out values of it (VALIDATION), when it has them: run, x, value, at,
    # piece; in the hover table as w0, w1, ... beside each run's v0, v1, ...
    validation: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["run", "x", "value", "at", "piece"]))
    # Grouped (groups.py), ``points`` and ``validation`` hold the groups' lines (``run``
    # is the group, ``n`` how many members have a value at x; the hover table's n0,
    # n1, ...), and this the members' own values when they are drawn too.
    members: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["run", "member", "x", "value", "piece"]))
    domain: list[float] | None = None   # the y range, when the robust range cut some
    notes: list[str] = field(default_factory=list)


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start
    (pandas' adjusted EWM is exactly that). A constant series is returned as is."""
    if weight <= 0 or len(values) == 0 or np.all(values == values[0]):
        return values.copy()
    return pd.Series(values).ewm(alpha=1 - weight, adjust=True).mean().to_numpy()


def wall_unit(seconds: float) -> tuple[str, float]:
    """A readable unit for a wall-time axis that spans ``seconds``, and its size."""
    if seconds < 120:
        return "s", 1.0
    if seconds < 7200:
        return "min", 60.0
    return "h", 3600.0


def wall_scale(series: list[RunSeries]) -> tuple[str, float]:
    """The wall-time axis' unit for these runs (wall_unit over their longest time)."""
    elapsed = [wall_time(e["recorded_at"], s.created_at)
               for s in series for e in s.epochs if e.get("recorded_at") is not None]
    return wall_unit(max(elapsed, default=0.0))


def wall_time(when: datetime | None, start: datetime, scale: float = 1.0) -> float:
    """The time from ``start`` to ``when`` in units of ``scale`` seconds (wall_unit's
    size); NaN when ``when`` was not recorded."""
    if when is None:
        return math.nan
    return (when - start).total_seconds() / scale


def x_position(x_axis: str, *, epoch: float | None, step: float | None,
               when: datetime | None, start: datetime, scale: float) -> float:
    """Where a point goes on ``x_axis``: at its ``epoch``, at its optimizer ``step``, or
    ("wall") at ``when`` as wall_time since ``start``. NaN where it has no place on that
    axis (it is not drawn)."""
    if x_axis == "wall":
        return wall_time(when, start, scale)
    place = epoch if x_axis == "epoch" else step
    return math.nan if place is None else float(place)


def rule_metric(rule: str) -> str:
    """Which chart an anomaly rule's flag is marked on."""
    if "loss" in rule:
        return "loss"
    if rule.startswith("lr"):
        return "lr"
    return "grad_norm"


def _float(values) -> np.ndarray:
    """A float array where None (not recorded) is NaN; use with a recorded mask."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _recorded(values) -> np.ndarray:
    return np.array([v is not None for v in values], dtype=bool)


def _epoch_rows(s: RunSeries, metric: str, x_axis: str, scale: float) -> dict:
    """x, value, lo, hi, recorded, bad (NaN/Inf count), at, epoch for one run's epochs."""
    rows = s.epochs
    epochs = np.array([e["epoch"] for e in rows], dtype=float)
    raw = [e.get(metric) for e in rows]
    value, recorded = _float(raw), _recorded(raw)
    bad = (recorded & ~np.isfinite(value)).astype(int)
    if metric == "grad_norm":
        bad = bad + np.array([e.get("nonfinite_steps") or 0 for e in rows])
        lo, hi = _float([e.get("grad_norm_min") for e in rows]), _float(
            [e.get("grad_norm_max") for e in rows])
    else:
        lo = hi = np.full(len(rows), np.nan)
    last = {e["epoch"]: e["last_step"] for e in s.epoch_steps}  # an epoch ends at its last step
    if x_axis.startswith(POINT):
        at_close = logged_x(s, x_axis)[1]
        x = np.array([at_close.get(e["epoch"], math.nan) for e in rows], dtype=float)
    else:
        x = np.array([x_position(x_axis, epoch=e["epoch"], step=last.get(e["epoch"]),
                                 when=e.get("recorded_at"), start=s.created_at,
                                 scale=scale) for e in rows], dtype=float)
    if x_axis == "step":
        at = [f"epoch {int(n)} (ends at step {int(v)})" if math.isfinite(v) else ""
              for n, v in zip(epochs, x)]
    else:
        at = [f"epoch {int(n)}" for n in epochs]
    return {"x": x, "value": value, "lo": lo, "hi": hi, "recorded": recorded,
            "bad": bad, "at": at}


def _bucket_rows(s: RunSeries, metric: str) -> dict:
    b = s.buckets
    if b is None or b.empty:
        empty = np.array([], dtype=float)
        return {"x": empty, "value": empty, "lo": empty, "hi": empty,
                "recorded": np.array([], dtype=bool), "bad": empty, "at": []}
    width = b["width"].to_numpy()
    value = b[metric].to_numpy(dtype=float)
    bad = b[f"{metric}_nonfinite"].to_numpy()
    ranged = width > 1
    lo = np.where(ranged, b[f"{metric}_min"].to_numpy(dtype=float), np.nan)
    hi = np.where(ranged, b[f"{metric}_max"].to_numpy(dtype=float), np.nan)
    first, last = b["first_step"].to_numpy(), b["last_step"].to_numpy()
    at = [f"step {f:,}" if w == 1 else f"steps {f:,}–{t:,} ({n:,} recorded, mean)"
          for f, t, w, n in zip(first, last, width, b["steps"].to_numpy())]
    return {"x": b["step"].to_numpy(dtype=float), "value": value, "lo": lo, "hi": hi,
            "recorded": ~np.isnan(value) | (bad > 0), "bad": bad, "at": at}


def _point_rows(s: RunSeries, key: str, x_axis: str, scale: float) -> dict:
    """x, value, lo, hi, recorded, bad, at for one run's values of its own name ``key``.

    On the step axis, a step value at its step (in buckets as wide as the run's steps are
    drawn: mean, min and max) and an epoch value at the step its epoch closed; on the
    epoch and wall-time axes, an epoch value at its epoch and an epoch's step values as
    their mean with their min-max band (the hover says so). NaN/Inf are counted, never
    averaged in."""
    if not s.points.get(key):  # nothing to place (pandas' empty groupby costs ~25 ms)
        return {"x": np.empty(0), "value": np.empty(0), "lo": np.empty(0),
                "hi": np.empty(0), "recorded": np.empty(0, dtype=bool),
                "bad": np.empty(0, dtype=int), "at": []}
    frame = pd.DataFrame(s.points.get(key, []), columns=["scope", "step", "epoch", "value"])
    frame = frame[frame["scope"] != "skipped"].astype(  # attempts are not steps
        {"step": float, "epoch": float, "value": float})
    finite = np.isfinite(frame["value"].to_numpy())
    frame = frame.assign(bad=(~finite).astype(int), kept=frame["value"].where(finite))
    if x_axis.startswith(POINT):
        return _logged_point_rows(s, frame, x_axis)
    if x_axis == "step":
        width = (int(s.buckets["width"].iloc[0])
                 if s.buckets is not None and len(s.buckets) else 1)
        bucketed = frame["scope"] == "step"
        frame["place"] = np.where(bucketed, (frame["step"] - 1) // width * width + 1,
                                  frame["step"])
    else:
        frame["place"] = frame["epoch"]
    grouped = frame.groupby(["place", "scope"], sort=True)
    g = grouped.agg(value=("kept", "mean"), lo=("kept", "min"), hi=("kept", "max"),
                    bad=("bad", "sum"), n=("step", "count"), first=("step", "min"),
                    last=("step", "max"), epoch=("epoch", "max")).reset_index()
    if x_axis == "step":
        x = g["place"].to_numpy(dtype=float)
        at = [f"step {int(r.first):,}" if r.n == 1 else
              f"steps {int(r.first):,}–{int(r.last):,} ({r.n:,} recorded, mean)"
              for r in g.itertuples()]
    else:
        recorded = {e["epoch"]: e.get("recorded_at") for e in s.epochs}
        x = np.array([x_position(x_axis, epoch=e, step=None, when=recorded.get(int(e)),
                                 start=s.created_at, scale=scale) for e in g["epoch"]],
                     dtype=float)
        at = [f"epoch {int(r.epoch)}" if r.scope == "epoch" else
              f"epoch {int(r.epoch)} (mean of {r.n:,} steps)" for r in g.itertuples()]
    ranged = g["n"].to_numpy() > 1
    return {"x": x, "value": g["value"].to_numpy(dtype=float),
            "lo": np.where(ranged, g["lo"].to_numpy(dtype=float), np.nan),
            "hi": np.where(ranged, g["hi"].to_numpy(dtype=float), np.nan),
            "recorded": np.ones(len(g), dtype=bool), "bad": g["bad"].to_numpy(),
            "at": at}


def read_keys(metrics) -> tuple[str, ...]:
    """The run's own names (Store.points keys) the charts of ``metrics`` draw: each
    picked POINT chart's, and the VALIDATION counterpart of each picked metric."""
    own = [m.removeprefix(POINT) for m in metrics if m.startswith(POINT)]
    return tuple(dict.fromkeys(own + [VALIDATION[m] for m in metrics if m in VALIDATION]))


def _validation_rows(s: RunSeries, key: str, x_axis: str, scale: float) -> dict:
    """_point_rows of ``key``'s epoch values only (what a held-out evaluation records)."""
    epochs_only = [p for p in s.points.get(key, []) if p["scope"] == "epoch"]
    return _point_rows(replace(s, points={key: epochs_only}), key, x_axis, scale)


def metric_data(series: list[RunSeries], metric: str, x_axis: str, *, title: str,
                smoothing: float = 0.0, log_scale: bool = False, robust: bool = True,
                x_range: tuple[float, float] | None = None,
                grouping: Grouping | None = None) -> MetricData:
    """The frames of one metric's chart; ``title`` names the metric in its markers
    (charts.METRICS); with ``grouping``, a line per group of runs (groups.aggregate)."""
    scale = wall_scale(series)[1]
    points, hover_cols, nonfinite, missing, notes = [], {}, [], [], []
    gaps = [pd.DataFrame(columns=["run", "x"])]   # where a run has a place but no value
    dropped_nonpositive = 0
    for i, s in enumerate(series):
        by_step = x_axis == "step" and metric in STEP_METRICS
        if metric.startswith(POINT):
            r = _point_rows(s, metric.removeprefix(POINT), x_axis, scale)
        else:
            r = _bucket_rows(s, metric) if by_step else _epoch_rows(s, metric, x_axis, scale)
        x, value = r["x"], r["value"]
        placed = np.isfinite(x)
        if not (placed & r["recorded"]).any():
            where = {"step": " (no per-step records)" if by_step else
                     " (no step records to place its epochs)",
                     "wall": " (no recording times)"}.get(x_axis, "")
            missing.append(s.label + (where if r["recorded"].any() else ""))
        drawable = placed & np.isfinite(value)
        if log_scale:
            dropped_nonpositive += int((drawable & ~(value > 0)).sum())
            drawable &= value > 0
        # Smoothed over the whole series, then cut to the zoom (as TensorBoard does).
        smoothed = (smooth(value[drawable], smoothing) if smoothing > 0 and metric in SMOOTHED
                    else None)
        if x_range is not None:
            placed &= (x >= x_range[0]) & (x <= x_range[1])
        finite = drawable & placed
        bad = placed & (r["bad"] > 0)
        at = np.array(r["at"], dtype=object)
        for j in np.flatnonzero(bad):
            counted = by_step or metric == "grad_norm" or metric.startswith(POINT)
            count = int(r["bad"][j]) if counted else 1
            what = (f"{title.lower()} is {value[j]}" if not counted else
                    f"{count} step(s) with a NaN/Inf {title.lower()}")
            nonfinite.append({"run": s.label, "x": x[j], "at": at[j], "what": what})
        # Lines break wherever a value is missing: a new piece starts after each gap.
        piece = np.cumsum(~finite)[finite]
        frame = pd.DataFrame({"run": s.label, "x": x[finite], "value": value[finite],
                              "lo": r["lo"][finite], "hi": r["hi"][finite],
                              "piece": piece.astype(np.int32) + 100_000 * i})
        if log_scale:
            frame.loc[~(frame["lo"] > 0), ["lo", "hi"]] = np.nan
        if smoothed is not None:
            frame["smooth"] = smoothed[placed[drawable]]
        points.append(frame)
        gaps.append(pd.DataFrame({"run": s.label, "x": x[placed & ~finite]}))
        hover_cols[f"v{i}"] = pd.Series(value[finite], index=x[finite])
        hover_cols.setdefault("_at", pd.Series(dtype=object))
        hover_cols["_at"] = pd.concat([hover_cols["_at"],
                                       pd.Series(at[finite], index=x[finite])])
    frame = (pd.concat(points, ignore_index=True) if points else
             pd.DataFrame(columns=["run", "x", "value", "lo", "hi", "piece"]))
    validation = pd.DataFrame(columns=["run", "x", "value", "at", "piece"])
    held_gaps = [pd.DataFrame(columns=["run", "x"])]
    if metric in VALIDATION:
        validation = _validation(series, VALIDATION[metric], x_axis, scale, title=title,
                                 log_scale=log_scale, x_range=x_range,
                                 hover_cols=hover_cols, nonfinite=nonfinite, gaps=held_gaps)
    members = pd.DataFrame(columns=["run", "member", "x", "value", "piece"])
    if grouping is not None:
        members = frame.assign(member=frame["run"], run=frame["run"].map(dict(grouping.of)))[
            ["run", "member", "x", "value", "piece"]] if grouping.members else members
        frame, validation, hover_cols = _grouped(
            frame, pd.concat(gaps, ignore_index=True), validation,
            pd.concat(held_gaps, ignore_index=True), grouping, hover_cols,
            smoothing=smoothing if metric in SMOOTHED else 0.0, log_scale=log_scale)
        nonfinite = _to_groups(nonfinite, grouping, "what")
        if x_axis == "wall":
            notes.append("Groups on wall time: a mean is over the members with a value at "
                         "the very same time since their start, which is rare (group on "
                         "epochs or steps)")
    if "smooth" not in frame and smoothing > 0 and metric in SMOOTHED:
        frame["smooth"] = frame["value"]
    if dropped_nonpositive:
        notes.append(f"{dropped_nonpositive} value(s) at or below 0 are not drawn on the "
                     "log scale")
    # The held-out values count for the y range as much as the training ones.
    drawn = pd.concat([frame, validation[["run", "x", "value"]]], ignore_index=True) \
        if len(validation) else frame
    domain = (robust_domain(drawn) if robust and not log_scale and robust_applies(metric)
              else None)
    clipped = pd.concat([_clipped(frame, domain), _clipped(validation, domain, "validation: ")],
                        ignore_index=True)
    if domain is not None and len(clipped):
        runs = ", ".join(dict.fromkeys(clipped["run"]))
        notes.append(f"Robust y range {domain[0]:.4g} to {domain[1]:.4g}: {len(clipped)} "
                     f"point(s) of {runs} beyond it are marked on its edge (turn off "
                     "'Robust y range' to see them all)")
    flags = _flags(series, metric, x_axis, scale, x_range)
    resumes = _resumes(series, x_axis, scale, x_range)
    if grouping is not None:
        flags = pd.DataFrame(_to_groups(flags.to_dict("records"), grouping, "message"),
                             columns=flags.columns)
        resumes = pd.DataFrame(_to_groups(resumes.to_dict("records"), grouping, "what"),
                               columns=resumes.columns)
    return MetricData(
        metric=metric, points=frame, hover=_hover_frame(hover_cols, x_axis),
        nonfinite=pd.DataFrame(nonfinite, columns=["run", "x", "at", "what"]),
        clipped=clipped, flags=flags, resumes=resumes, missing=missing, domain=domain,
        notes=notes, validation=validation, members=members)


def _grouped(frame: pd.DataFrame, gaps: pd.DataFrame, validation: pd.DataFrame,
             held_gaps: pd.DataFrame, grouping: Grouping, hover_cols: dict, *, smoothing: float,
             log_scale: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The runs' drawn values as their groups' lines (groups.aggregate), the held-out
    ones too, and the hover table's columns for them: v0, v1, ... each group's mean,
    n0, n1, ... how many members it is over, w0, w1, ... its held-out mean."""
    lines = aggregate(frame, gaps, grouping)
    if log_scale:
        lines.loc[~(lines["lo"] > 0), ["lo", "hi"]] = np.nan
    if smoothing > 0 and len(lines):
        lines["smooth"] = np.concatenate([smooth(g["value"].to_numpy(dtype=float), smoothing)
                                          for _, g in lines.groupby("run", sort=False)])
    held = aggregate(validation, held_gaps, grouping)
    if log_scale:
        held.loc[~(held["lo"] > 0), ["lo", "hi"]] = np.nan
    out = {"_at": hover_cols.get("_at", pd.Series(dtype=object))}
    for k, group in enumerate(grouping.labels):
        mine, mine_held = lines[lines["run"] == group], held[held["run"] == group]
        if len(mine):
            out[f"v{k}"] = pd.Series(mine["value"].to_numpy(), index=mine["x"].to_numpy())
            out[f"n{k}"] = pd.Series(mine["n"].to_numpy(), index=mine["x"].to_numpy())
        if len(mine_held):
            out[f"w{k}"] = pd.Series(mine_held["value"].to_numpy(),
                                     index=mine_held["x"].to_numpy())
    return lines, held, out


def _to_groups(rows: list[dict], grouping: Grouping, text: str) -> list[dict]:
    """Markers of member runs as markers of their groups, their ``text`` naming the
    member."""
    return [{**r, "run": grouping.group(r["run"]), text: f"{r['run']}: {r[text]}"}
            for r in rows]


def _validation(series: list[RunSeries], key: str, x_axis: str, scale: float, *,
                title: str, log_scale: bool, x_range, hover_cols: dict,
                nonfinite: list[dict], gaps: list[pd.DataFrame]) -> pd.DataFrame:
    """The runs' recorded values of ``key`` (a VALIDATION counterpart) as drawn: each at
    its epoch (on steps: where that epoch ended), the line broken wherever one is
    missing or not finite (a NaN/Inf is a marker). Adds w0, w1, ... to ``hover_cols``,
    the non-finite values to ``nonfinite`` and where a run has no value to ``gaps``."""
    frames = []
    for i, s in enumerate(series):
        r = _validation_rows(s, key, x_axis, scale)
        x, value, at = r["x"], r["value"], np.array(r["at"], dtype=object)
        placed = np.isfinite(x)
        if x_range is not None:
            placed &= (x >= x_range[0]) & (x <= x_range[1])
        finite = placed & np.isfinite(value) & ((value > 0) if log_scale else True)
        for j in np.flatnonzero(placed & (r["bad"] > 0)):
            nonfinite.append({"run": s.label, "x": x[j], "at": at[j],
                              "what": f"validation {title.lower()} ({key}) is {value[j]}"})
        piece = np.cumsum(~finite)[finite]
        gaps.append(pd.DataFrame({"run": s.label, "x": x[placed & ~finite]}))
        frames.append(pd.DataFrame({"run": s.label, "x": x[finite], "value": value[finite],
                                    "at": at[finite],
                                    "piece": piece.astype(np.int32) + 100_000 * i}))
        if finite.any():
            hover_cols[f"w{i}"] = pd.Series(value[finite], index=x[finite])
            hover_cols["_at"] = pd.concat([hover_cols.get("_at", pd.Series(dtype=object)),
                                           pd.Series(at[finite], index=x[finite])])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run", "x", "value", "at", "piece"])


def robust_applies(metric: str) -> bool:
    """Whether the robust y range may cut ``metric``'s chart (not the LR, lr/1 ... of a
    run's own, accuracy or throughput: NOT_ROBUST)."""
    parts = metric.removeprefix(POINT).split("/") if metric.startswith(POINT) else []
    return metric not in NOT_ROBUST and not any(
        p.startswith("lr") or p == "learning_rate" for p in parts)


def robust_domain(frame: pd.DataFrame) -> list[float] | None:
    """A y range that leaves out exploded values, or None when nothing is far out.

    Each run's typical top is the 75th percentile of its values. The calm runs are those
    whose typical top is at most OUTLIER_RATIO times the lowest one; the range reaches
    the calm runs' highest value that is not itself more than OUTLIER_RATIO times their
    typical top, and down to the lowest value of any run. So a run whose loss went to
    2493 and then stayed near 50, beside runs near 3, is marked on the edge instead of
    flattening them (a fixed multiple of the others, as before, kept its 50s in range),
    while runs that differ by a few times keep their full range.
    """
    values = frame[["run", "value"]].dropna()
    if values.empty:
        return None
    tops = values.groupby("run", observed=True)["value"].quantile(TYPICAL_TOP).abs()
    calm = tops[tops <= OUTLIER_RATIO * max(tops.min(), 1e-12)]
    limit = OUTLIER_RATIO * max(calm.max(), 1e-12)
    columns = [c for c in ("value", "lo", "hi", "smooth") if c in frame]
    extremes = pd.concat([frame[["run", c]].set_axis(["run", "v"], axis=1)
                          for c in columns]).dropna()
    kept = extremes[extremes["run"].isin(calm.index) & (extremes["v"] <= limit)]["v"]
    if kept.empty:
        return None
    high = float(kept.max())
    inside = extremes["v"][extremes["v"] <= high]
    if len(inside) == len(extremes):
        return None
    low = float(inside.min())
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    return [low - pad if low - pad > 0 or low < 0 else 0.0, high + pad]


def _clipped(frame: pd.DataFrame, domain: list[float] | None, kind: str = "") -> pd.DataFrame:
    """The points of ``frame`` beyond ``domain``, as markers on its edge; ``kind``
    starts their text (the held-out values say "validation: ")."""
    columns = ["run", "x", "at", "what", "edge"]
    if domain is None or frame.empty:
        return pd.DataFrame(columns=columns)
    out = frame[(frame["value"] > domain[1]) | (frame["value"] < domain[0])]
    return pd.DataFrame({"run": out["run"], "x": out["x"], "at": "",
                         "what": [f"{kind}{v:.6g} (off the chart)" for v in out["value"]],
                         "edge": np.where(out["value"] > domain[1], 0.97, 0.03)},
                        columns=columns)


def _hover_frame(columns: dict, x_axis: str) -> pd.DataFrame:
    """One row per x: each run's value there (v0, v1, ...) and the x's hover band."""
    at = columns.pop("_at", pd.Series(dtype=object))
    if not columns:
        return pd.DataFrame(columns=["x", "x_lo", "x_hi", "at"])
    table = pd.DataFrame({k: v[~v.index.duplicated()] for k, v in columns.items()})
    table = table.sort_index()
    if table.empty:
        return pd.DataFrame(columns=["x", "x_lo", "x_hi", "at", *columns])
    xs = table.index.to_numpy(dtype=float)
    mids = (xs[1:] + xs[:-1]) / 2
    half = (xs[-1] - xs[0]) / max(len(xs) - 1, 1) / 2 if len(xs) > 1 else 0.5
    table.insert(0, "x_hi", np.r_[mids, xs[-1] + half])
    table.insert(0, "x_lo", np.r_[xs[0] - half, mids])
    at = at[~at.index.duplicated()]
    table.insert(0, "at", at.reindex(table.index).fillna("").to_numpy()
                 if x_axis != "wall" else [f"{v:.4g}" for v in xs])
    table.insert(0, "x", xs)
    return table.reset_index(drop=True)


def _inside(x: float, x_range) -> bool:
    return x_range is None or x_range[0] <= x <= x_range[1]


def _flags(series, metric, x_axis, scale, x_range) -> pd.DataFrame:
    out = []
    for s in series:
        recorded = {e["epoch"]: e.get("recorded_at") for e in s.epochs}
        last = {e["epoch"]: e["last_step"] for e in s.epoch_steps}
        for f in s.flags:
            if rule_metric(f["rule"]) != metric:
                continue
            if x_axis.startswith(POINT):
                at_step, at_close = logged_x(s, x_axis)
                x = (at_step.get(f["step"], math.nan) if f.get("step")
                     else at_close.get(f["epoch"], math.nan))
                if not math.isfinite(x) or not _inside(x, x_range):
                    continue
                out.append({"run": s.label, "x": x, "rule": f["rule"],
                            "message": f["message"]})
                continue
            # On steps: the step the rule named, else the end of the flagged epoch.
            x = x_position(x_axis, epoch=f["epoch"], step=f.get("step") or last.get(f["epoch"]),
                           when=recorded.get(f["epoch"]), start=s.created_at, scale=scale)
            if not math.isfinite(x) or not _inside(x, x_range):
                continue
            out.append({"run": s.label, "x": x, "rule": f["rule"],
                        "message": f["message"]})
    return pd.DataFrame(out, columns=["run", "x", "rule", "message"])


def _resumes(series, x_axis, scale, x_range) -> pd.DataFrame:
    out = []
    for s in series:
        first = {}
        for e in s.epoch_steps:
            first[e["segment"]] = min(first.get(e["segment"], e["first_step"]), e["first_step"])
        for seg in s.segments:
            if seg["segment"] <= 1:
                continue
            # Between the epoch (step) it started from and the next one.
            step = first[seg["segment"]] - 0.5 if seg["segment"] in first else None
            if x_axis.startswith(POINT):  # at the value logged at its first step
                x = logged_x(s, x_axis)[0].get(first.get(seg["segment"]), math.nan)
            else:
                x = x_position(x_axis, epoch=seg["start_epoch"] + 0.5, step=step,
                               when=seg["started_at"], start=s.created_at, scale=scale)
            if not math.isfinite(x) or not _inside(x, x_range):
                continue
            out.append({"run": s.label, "x": x,
                        "what": f"resumed (segment {seg['segment']}) from the epoch "
                                f"{seg['start_epoch']} checkpoint"})
    return pd.DataFrame(out, columns=["run", "x", "what"])


def fixed_y_range(d: MetricData, low: float | None, high: float | None) -> MetricData:
    """``d`` drawn in the y range a user set (either end None: where the values reach),
    in place of the robust one; points beyond it are marked on its edge."""
    columns = [c for c in ("value", "lo", "hi", "smooth") if c in d.points]
    values = (pd.concat([d.points[c] for c in columns]).astype(float) if columns
              else pd.Series(dtype=float))
    values = values[np.isfinite(values)]
    low = float(values.min()) if low is None and len(values) else low
    high = float(values.max()) if high is None and len(values) else high
    if low is None or high is None or not low < high:
        return d
    domain = [low, high]
    clipped = _clipped(d.points, domain)
    notes = [n for n in d.notes if not n.startswith("Robust y range")]
    notes.append(f"Y range set to {low:.4g} to {high:.4g}" + (
        f": {len(clipped)} point(s) beyond it are marked on its edge" if len(clipped)
        else ""))
    return replace(d, domain=domain, clipped=clipped, notes=notes)


def logged_x(s: RunSeries, x_axis: str) -> tuple[dict[int, float], dict[int, float]]:
    """Where ``s``'s records go on the x axis of a name it logged (``x_axis``, POINT +
    name): a step's values at the value of that name logged at the same step, an
    epoch's at its value at the epoch's close (its epoch value, else its value at the
    epoch's last step). A record with no such value has no place on that axis: nothing
    is carried over from another step. Returns (by step, by epoch)."""
    rows = s.points.get(x_axis.removeprefix(POINT), [])
    by_step = {r["step"]: float(r["value"]) for r in rows if r["scope"] == "step"}
    by_epoch = {r["epoch"]: float(r["value"]) for r in rows if r["scope"] == "epoch"}
    for e in s.epoch_steps:
        if e["epoch"] not in by_epoch and e["last_step"] in by_step:
            by_epoch[e["epoch"]] = by_step[e["last_step"]]
    return by_step, by_epoch


def _logged_point_rows(s: RunSeries, frame: pd.DataFrame, x_axis: str) -> dict:
    """_point_rows on the x axis of a logged name: each value at its own place."""
    at_step, at_close = logged_x(s, x_axis)
    step_scope = (frame["scope"] == "step").to_numpy()
    x = np.array([at_step.get(int(st), math.nan) if is_step else at_close.get(int(ep), math.nan)
                  for st, ep, is_step in zip(frame["step"], frame["epoch"], step_scope)],
                 dtype=float)
    at = [f"step {int(st):,}" if is_step else f"epoch {int(ep)}"
          for st, ep, is_step in zip(frame["step"], frame["epoch"], step_scope)]
    nothing = np.full(len(frame), np.nan)
    return {"x": x, "value": frame["value"].to_numpy(dtype=float), "lo": nothing,
            "hi": nothing, "recorded": np.ones(len(frame), dtype=bool),
            "bad": frame["bad"].to_numpy(), "at": at}
