"""Altair charts of loss, gradient norm and learning rate, overlaid for several runs.

How they stay honest: a value that was not recorded is not drawn, and the chart says
"not recorded" for that run; a NaN/Inf is a marker on the chart's top edge and the line
breaks there (lines never bridge a gap); smoothing (TensorBoard's debiased EMA) is drawn
over the faint raw line, never instead of it; downsampled steps show each bucket's
min-max band, so a one-step spike stays visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import altair as alt
import pandas as pd

from formats import exact

METRICS = {"loss": "Loss", "grad_norm": "Gradient norm", "lr": "Learning rate"}
X_AXES = {"epoch": "epoch", "step": "step", "wall": "wall time"}
HEIGHT = 300
VISIBLE_POINTS = 300  # above this many points per chart, hover targets are invisible


@dataclass
class RunSeries:
    """One run's records, as the explorer read them."""

    run_id: str
    label: str
    created_at: datetime
    epochs: list[dict]
    buckets: list[dict] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)
    flags: list[dict] = field(default_factory=list)


@dataclass
class ChartData:
    points: pd.DataFrame      # run, x, value, lo, hi, piece, smoothed, tooltip texts
    nonfinite: pd.DataFrame   # run, x, where, what
    resumes: pd.DataFrame     # run, x, what
    flags: pd.DataFrame       # run, x, rule, message
    missing: list[str]        # labels of runs that did not record this metric
    x_axis: str               # a key of X_AXES
    x_title: str


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
    finite = [v for v in values if math.isfinite(v)]
    if weight <= 0 or len(set(finite)) <= 1:
        return list(values)
    last, n, out = 0.0, 0, []
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        out.append(last / (1 - weight ** n))
    return out


def rule_metric(rule: str) -> str:
    """Which chart an anomaly rule's flag is marked on."""
    if "loss" in rule:
        return "loss"
    if rule.startswith("lr"):
        return "lr"
    return "grad_norm"


def wall_unit(seconds: float) -> tuple[str, float]:
    """A readable unit for a wall-time axis that spans ``seconds``, and its size."""
    if seconds < 120:
        return "s", 1.0
    if seconds < 7200:
        return "min", 60.0
    return "h", 3600.0


def chart_data(series: list[RunSeries], metric: str, x_axis: str,
               smoothing: float = 0.0) -> ChartData:
    """Long-form frames for one metric's chart: one row per epoch or step bucket."""
    rows, nonfinite, resumes, flag_rows, missing = [], [], [], [], []
    elapsed_max = max([_elapsed(s, e["recorded_at"]) for s in series for e in s.epochs],
                      default=0.0)
    unit, scale = wall_unit(elapsed_max)
    for s in series:
        run_rows, run_nonfinite = [], []
        if x_axis == "step":
            for b in s.buckets:
                _bucket_row(s, b, metric, run_rows, run_nonfinite)
        else:
            for e in s.epochs:
                x = e["epoch"] if x_axis == "epoch" else _elapsed(s, e["recorded_at"]) / scale
                _epoch_row(s, e, x, metric, run_rows, run_nonfinite)
        if not any(r["value"] is not None for r in run_rows) and not run_nonfinite:
            what = " (no per-step records)" if x_axis == "step" and not s.buckets else ""
            missing.append(s.label + what)
        _pieces_and_smoothing(run_rows, smoothing)
        rows += [r for r in run_rows if r["value"] is not None]
        nonfinite += run_nonfinite
        resumes += _resumes(s, x_axis, scale)
        flag_rows += _flags(s, metric, x_axis, scale)
    x_title = {"epoch": "epoch", "step": "optimizer step",
               "wall": f"wall time since the run started ({unit})"}[x_axis]
    return ChartData(
        pd.DataFrame(rows, columns=["run", "x", "value", "lo", "hi", "piece", "smoothed",
                                    "where", "exact", "range", "smoothed_text"]),
        pd.DataFrame(nonfinite, columns=["run", "x", "where", "what"]),
        pd.DataFrame(resumes, columns=["run", "x", "what"]),
        pd.DataFrame(flag_rows, columns=["run", "x", "rule", "message"]),
        missing, x_axis, x_title)


def _elapsed(s: RunSeries, when: datetime | None) -> float:
    return (when - s.created_at).total_seconds() if when is not None else math.nan


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _row(s: RunSeries, x, value, lo, hi, where: str) -> dict:
    ranged = _finite(lo) and _finite(hi)
    return {"run": s.label, "x": x, "value": value if _finite(value) else None,
            "lo": lo if ranged else None, "hi": hi if ranged else None, "where": where,
            "exact": exact(value),
            "range": f"{exact(lo)} … {exact(hi)}" if ranged else ""}


def _epoch_row(s, e, x, metric, rows, nonfinite) -> None:
    value = e.get(metric)
    lo, hi = ((e.get("grad_norm_min"), e.get("grad_norm_max")) if metric == "grad_norm"
              else (None, None))
    where = f"epoch {e['epoch']}"
    rows.append(_row(s, x, value, lo, hi, where))
    if value is not None and not math.isfinite(value):
        nonfinite.append({"run": s.label, "x": x, "where": where,
                          "what": f"{METRICS[metric].lower()} is {value}"})
    if metric == "grad_norm" and e.get("nonfinite_steps"):
        nonfinite.append({"run": s.label, "x": x, "where": where,
                          "what": f"{e['nonfinite_steps']} step(s) with a NaN/Inf grad norm"})


def _bucket_row(s, b, metric, rows, nonfinite) -> None:
    last = b["step"] + b["width"] - 1
    where = (f"step {b['step']}" if b["width"] == 1 else
             f"steps {b['step']}–{last} ({b['steps']} recorded, mean shown)")
    lo, hi = ((b[f"{metric}_min"], b[f"{metric}_max"]) if b["width"] > 1 else (None, None))
    rows.append(_row(s, b["step"], b[metric], lo, hi, where))
    bad = b.get(f"{metric}_nonfinite")
    if bad:
        nonfinite.append({"run": s.label, "x": b["step"], "where": where,
                          "what": f"{bad} step(s) with a NaN/Inf {METRICS[metric].lower()}"})


def _pieces_and_smoothing(rows: list[dict], smoothing: float) -> None:
    """Number the unbroken stretches of a run's line and smooth over its drawn points."""
    piece = 0
    for r in rows:
        if r["value"] is None:
            piece += 1
        r["piece"] = f"{r['run']}#{piece}"
    drawn = [r for r in rows if r["value"] is not None]
    for r, v in zip(drawn, smooth([r["value"] for r in drawn], smoothing)):
        r["smoothed"] = v
        r["smoothed_text"] = exact(v)


def _resumes(s: RunSeries, x_axis: str, scale: float) -> list[dict]:
    out = []
    for seg in s.segments:
        if seg["segment"] <= 1:
            continue
        if x_axis == "epoch":
            x = seg["start_epoch"] + 0.5
        elif x_axis == "wall":
            x = _elapsed(s, seg["started_at"]) / scale
        else:
            steps = [b["step"] for b in s.buckets if b["segment"] == seg["segment"]]
            if not steps:
                continue
            x = min(steps) - 0.5
        out.append({"run": s.label, "x": x,
                    "what": f"resumed (attempt {seg['segment']}) from the epoch "
                            f"{seg['start_epoch']} checkpoint"})
    return out


def _flags(s: RunSeries, metric: str, x_axis: str, scale: float) -> list[dict]:
    out = []
    recorded = {e["epoch"]: e.get("recorded_at") for e in s.epochs}
    for f in s.flags:
        if rule_metric(f["rule"]) != metric:
            continue
        if x_axis == "epoch":
            x = f["epoch"]
        elif x_axis == "wall":
            x = _elapsed(s, recorded.get(f["epoch"])) / scale
        else:
            x = f.get("step") or next((b["step"] for b in s.buckets
                                       if b["epoch"] <= f["epoch"] <= b["last_epoch"]), None)
        if x is None or (isinstance(x, float) and math.isnan(x)):
            continue
        out.append({"run": s.label, "x": x, "rule": f["rule"], "message": f["message"]})
    return out


def metric_chart(data: ChartData, metric: str, labels: list[str], *, smoothing: float = 0.0,
                 log_scale: bool = False) -> alt.LayerChart:
    """The layered chart: band, raw line, smoothed line, hover points, edge markers."""
    title = METRICS[metric]
    legend = (alt.Legend(title=None, labelLimit=300, symbolOpacity=1) if len(labels) > 1
              else None)  # one run: the page already names it
    color = alt.Color("run:N", scale=alt.Scale(domain=labels, scheme="tableau10"),
                      legend=legend)
    counted = data.x_axis in ("epoch", "step")  # whole numbers on the axis
    x = alt.X("x:Q", title=data.x_title, scale=alt.Scale(zero=False, nice=False),
              axis=alt.Axis(format="d", tickMinStep=1) if counted else alt.Axis())
    y_scale = alt.Scale(type="log") if log_scale else alt.Scale(zero=False)
    y_title = title + (" (log scale)" if log_scale else "")
    y = alt.Y("value:Q", title=y_title, scale=y_scale)
    points = data.points
    base = alt.Chart(points).encode(x=x, color=color, detail="piece:N")
    layers = []
    if points["lo"].notna().any():
        layers.append(base.transform_filter("datum.lo != null").mark_area(opacity=0.18)
                      .encode(y=alt.Y("lo:Q", title=y_title, scale=y_scale), y2="hi:Q"))
    layers.append(base.mark_line(opacity=0.3 if smoothing > 0 else 1.0, strokeWidth=1.5)
                  .encode(y=y))
    if smoothing > 0:
        layers.append(base.mark_line(strokeWidth=2).encode(
            y=alt.Y("smoothed:Q", title=y_title, scale=y_scale)))
    tooltip = [alt.Tooltip("run:N"), alt.Tooltip("where:N", title="at"),
               alt.Tooltip("exact:N", title=title)]
    if points["range"].ne("").any():
        tooltip.append(alt.Tooltip("range:N", title="min … max"))
    if smoothing > 0:
        tooltip.append(alt.Tooltip("smoothed_text:N", title="smoothed"))
    layers.append(base.mark_circle(size=30).encode(
        y=y, tooltip=tooltip,
        opacity=alt.value(0.8 if len(points) <= VISIBLE_POINTS else 0.0)))
    # Markers sit on the plot's edges: their own y scale (0 = bottom, 1 = top), no axis.
    edge = alt.Y("edge:Q", scale=alt.Scale(domain=[0, 1]), axis=None)
    markers = []
    if len(data.nonfinite):
        markers.append(alt.Chart(data.nonfinite.assign(edge=0.97)).mark_point(
            shape="triangle-down", filled=True, size=110, strokeWidth=1, stroke="black")
            .encode(x=x, y=edge, color=color,
                    tooltip=[alt.Tooltip("run:N"), alt.Tooltip("where:N", title="at"),
                             alt.Tooltip("what:N", title="non-finite")]))
    if len(data.flags):
        markers.append(alt.Chart(data.flags.assign(edge=0.03)).mark_point(
            shape="diamond", filled=True, size=130, color="black").encode(x=x, y=edge,
                                  tooltip=[alt.Tooltip("run:N"), alt.Tooltip("rule:N"),
                                           alt.Tooltip("message:N", title="anomaly")]))
    if len(data.resumes):
        markers.append(alt.Chart(data.resumes).mark_rule(strokeDash=[5, 4], color="gray")
                       .encode(x=x, tooltip=[alt.Tooltip("run:N"),
                                             alt.Tooltip("what:N", title="resume")]))
    # A run that did not record this metric is named in the subtitle, never drawn.
    subtitle = "not recorded: " + ", ".join(data.missing) if data.missing else ""
    return (alt.layer(alt.layer(*layers), *markers).resolve_scale(y="independent")
            .properties(title=alt.TitleParams(title, subtitle=subtitle, anchor="start"),
                        height=HEIGHT))
