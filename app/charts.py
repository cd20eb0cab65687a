"""The compare charts as one Vega-Lite spec over series.py's frames: a chart per metric,
stacked on one shared x axis, drawn by vega_component.

Drag across any chart to zoom all of them (double-click: back); hovering shows a rule and
each run's value on every chart; NaN/Inf, flags and resumes are marked on the edges; a
run's colour comes from its creation order, so it keeps it whichever runs are picked;
clicking a legend entry hides that run (every mark of it; its entry fades) and clicking
it again shows it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

import vega_component
from groups import Grouping
from series import POINT, SMOOTHED, MetricData, RunSeries, wall_scale

METRICS = {"loss": "Loss", "grad_norm": "Gradient norm", "lr": "Learning rate",
           "token_accuracy": "Token accuracy", "tokens_per_second": "Tokens per second"}
HEIGHT = 220


def title(metric: str) -> str:
    """A chart's title: the metric's name, or a run's own name as it logged it."""
    return METRICS.get(metric) or metric.removeprefix(POINT)


VISIBLE_POINTS = 300        # up to this many points per chart, each is drawn as a dot
# One colour per run in creation order. Each is a line at least 3:1 against the page in
# Streamlit's light theme (#ffffff) and dark one (#171614; #0e1117 before 1.67) (WCAG
# 1.4.11), none is a grey (CIELAB chroma 35 and up), every two differ by 15 or more in
# CIEDE2000, and they are in the order that keeps runs made one after another (ranks
# wrap around) 43 or more apart. Picked farthest-first by CIEDE2000 from the sRGB
# colours that qualify, then ordered; tests/test_explorer_palette.py measures it all.
PALETTE = ("#4678b4", "#ff557d", "#05aa32", "#6e5a96", "#a09600", "#a087c3", "#556e00",
           "#9b4b64", "#009bc8", "#c87d69", "#7828ff", "#007355", "#a54b37", "#05a0a0",
           "#ff00e6", "#8c5a1e", "#b900a0", "#dc7800", "#826eff", "#ff0005")
RULE_COLOR = "#888888"   # the hover rule: 3.5:1 on the light background, 5.1:1 on the dark
NUMBER = ".6~g"   # significant digits in tooltips
RAW_UNDER_SMOOTH, SMOOTH_WIDTH = 0.75, 2.5   # line widths (px) with smoothing on
HIDDEN = "hidden_runs"   # the spec's parameter: labels of the runs hidden in the legend
VALIDATION_DASH = [6, 4]   # a held-out (validation) line: dashed, in its run's colour
# The line styles' legend: which line is the training value, which the held-out one.
KINDS = {"training": [1, 0], "validation (held out)": VALIDATION_DASH}
MEMBER_WIDTH, MEMBER_OPACITY = 1.1, 0.9   # a group's members, under its line: at 0.8 px and
# half opacity they vanished into the band of their own colour (0.18)
HIT_PX = 24   # a marker's hover target, across (WCAG 2.5.8's minimum target size)
SHOWN = {"filter": f"indexof({HIDDEN}, datum.run) < 0"}   # a layer's runs not hidden
Y_AXIS_EXTENT = 64          # pixels for a y axis' ticks and labels (up to ~9 characters) ...
Y_AXIS_ROOM = Y_AXIS_EXTENT + 32   # ... and its title: what a chart takes left of its plot


def axis_format(low: float, high: float, log_scale: bool = False) -> str:
    """The d3 format of an axis' tick labels over [low, high], one notation for the
    whole axis: plain numbers (Vega takes the decimals from the tick step: 80, 100,
    0.0015), SI prefixes from 100,000 up (150k, 2M), scientific below 0.001 (2e-5) or on
    a log axis that spans past either. Vega's own "~g" wrote 80 and 100 as 8e+1 and
    1e+2, since it keeps only as many digits as the tick step needs."""
    top = max(abs(low), abs(high))
    if log_scale:
        return "~e" if (0 < low < 1e-3 or top >= 1e5) else "~g"
    if top >= 1e5:
        return "~s"
    if 0 < top < 1e-3:
        return "~e"
    return "~f"


def _y_range(d: MetricData, log_scale: bool) -> tuple[float, float]:
    """The values a chart's y axis spans (its robust domain, else everything drawn)."""
    if d.domain is not None:
        return d.domain[0], d.domain[1]
    columns = [c for c in ("value", "lo", "hi", "smooth") if c in d.points]
    values = pd.concat([*(d.points[c] for c in columns), d.validation["value"]]).astype(
        float) if columns else pd.Series(dtype=float)
    values = values[np.isfinite(values) & ((values > 0) if log_scale else True)]
    return (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)


def colors(ranks: dict[str, int], picked: list[str]) -> dict[str, str]:
    """A colour per picked run: PALETTE at its creation rank, the next free one if two
    picked runs would share it (only runs len(PALETTE) apart can)."""
    out, taken = {}, set()
    for run_id in sorted(picked, key=lambda i: ranks.get(i, 0)):
        slot = ranks.get(run_id, 0) % len(PALETTE)
        while PALETTE[slot] in taken and len(taken) < len(PALETTE):
            slot = (slot + 1) % len(PALETTE)
        out[run_id] = PALETTE[slot]
        taken.add(PALETTE[slot])
    return out


def x_title(x_axis: str, series: list[RunSeries]) -> str:
    if x_axis.startswith(POINT):  # a name the runs logged of their own
        return x_axis.removeprefix(POINT)
    return {"epoch": "epoch", "step": "optimizer step",
            "wall": f"wall time since the run started ({wall_scale(series)[0]})"}[x_axis]


def spec(data: list[MetricData], series: list[RunSeries], x_axis: str, *,
         smoothing: float = 0.0, log_metrics: tuple[str, ...] = (),
         zoomable: bool = True, grouping: Grouping | None = None) -> dict:
    """The Vega-Lite spec: a chart per metric, stacked, one x scale, one legend.

    ``zoomable``: a drag selects an x range (the "zoom" selection the page reads back);
    ``grouping``: the data is grouped (metric_data's grouping): a line and a legend
    entry per group, in its colour.
    """
    labels = [s.label for s in series] if grouping is None else grouping.labels
    line_colors = ([s.color for s in series] if grouping is None else
                   [c for _, c in grouping.colors])
    # A legend entry of a hidden run is faded; the legend is the switch (the component
    # turns a click on an entry into HIDDEN's new value).
    faded = {"signal": f"indexof({HIDDEN}, datum.value) >= 0 ? 0.3 : 1"}
    entry = {"interactive": True, "update": {"opacity": faded, "cursor": {"value": "pointer"}}}
    color = {"field": "run", "type": "nominal", "title": None,
             "scale": {"domain": labels, "range": line_colors},
             "legend": {"encode": {"symbols": entry, "labels": entry}}}
    counted = x_axis in ("epoch", "step")
    # One x scale for every chart (resolve: shared): its domain is the union of all they
    # draw, resume lines and markers included; a zoom filtered the data to its range.
    x = {"field": "x", "type": "quantitative", "title": x_title(x_axis, series),
         "scale": {"zero": False, "nice": False},
         # labelFlush: the last x label stays inside the plot's width, not past it.
         "axis": {"format": "~s" if x_axis == "step" else ("d" if counted else "~f"),
                  "tickMinStep": 1 if counted else None, "labelFlush": True}}
    if not counted:
        x["axis"].pop("tickMinStep")
    if x_axis.startswith(POINT):  # any values at all: one notation over their span
        xs = pd.concat([d.points["x"] for d in data]).astype(float)
        xs = xs[np.isfinite(xs)]
        x["axis"]["format"] = axis_format(*((xs.min(), xs.max()) if len(xs) else (0, 1)))
    datasets, charts, views, hover_views = {}, [], [], []
    for i, d in enumerate(data):
        chart, names = _metric_chart(d, i, x, color, labels, datasets,
                                     smoothing=smoothing if d.metric in SMOOTHED else 0.0,
                                     log_scale=d.metric in log_metrics)
        charts.append(chart)
        views.append(names["zoom"])
        hover_views.append(names["hover"])
    params = [
        # Drag across a chart: the app zooms every chart to that x range
        # (double-click: back); the range comes back as this selection.
        {"name": "zoom", "select": {"type": "interval", "encodings": ["x"],
                                    "clear": "dblclick"}, "views": views},
        {"name": "hover", "select": {"type": "point", "fields": ["x"], "on": "pointerover",
                                     "clear": "pointerout", "nearest": False},
         "views": hover_views},
        # The runs hidden through the legend (labels): every mark of theirs is left out.
        {"name": HIDDEN, "value": []},
    ]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        # Plain "pad" sizing: draw() sets each plot's width to the page's less
        # Y_AXIS_ROOM, which the y axes take left of it. "fit-x" fitted the page by
        # itself, but only by laying the charts out twice: every point was encoded again
        # at the narrower width, half the browser's time.
        "autosize": {"type": "pad"},
        "padding": {"left": 0, "right": 0, "top": 5, "bottom": 20},
        # The runs in colour order: the datasets name a run by its index in this list.
        "usermeta": {"runs": labels},
        "datasets": datasets,
        "vconcat": charts,
        "resolve": {"scale": {"x": "shared", "color": "shared"}},
        "params": params if zoomable else params[1:],
        "config": {"legend": {"orient": "top", "labelLimit": 0, "columns": 4,
                              "symbolOpacity": 1,
                              "symbolType": "stroke", "symbolStrokeWidth": 3},
                   # A fixed y-axis width: every chart's plot starts at the same x (one
                   # x axis for all), and the room the axes take is known beforehand.
                   "axisY": {"minExtent": Y_AXIS_EXTENT,
                             "maxExtent": Y_AXIS_EXTENT, "labelLimit": Y_AXIS_EXTENT - 8},
                   "view": {"stroke": None},
                   "mark": {"aria": False}},
    }


def draw(chart: dict, key: str | None = None, hidden: list[str] = ()) -> None:
    """Show a spec() chart across the page's width, its y axes included (the plots take
    the width less Y_AXIS_ROOM), the runs labelled ``hidden`` hidden; a zoomable one's
    drags come back as vega_component.zoom_event(key), its legend clicks as
    vega_component.hidden_runs(key)."""
    draw_payload(payload(chart), key=key, hidden=hidden)


def payload(chart: dict) -> dict:
    """What the component draws of a spec() chart (vega_component.payload): built once
    where it is cached, not on every rerun that draws it."""
    return vega_component.payload(chart, Y_AXIS_ROOM)


def draw_payload(data: dict, key: str | None = None, hidden: list[str] = ()) -> None:
    """draw() of a payload() made earlier."""
    vega_component.draw(data, key=key, hidden=hidden)


def _metric_chart(d: MetricData, i: int, x: dict, color: dict, labels: list[str],
                  datasets: dict, *, smoothing: float, log_scale: bool) -> tuple[dict, dict]:
    m = d.metric
    names = {"zoom": f"zoom_{m}", "hover": f"hover_{m}"}

    def data(kind: str, frame: pd.DataFrame) -> dict:
        name = f"{kind}_{m}"
        datasets[name] = frame
        return {"name": name}

    y_title = title(m) + (" (log scale)" if log_scale else "")
    y_scale = {"type": "log"} if log_scale else {"zero": False}
    if d.domain is not None:
        y_scale = {**y_scale, "domain": d.domain}
    y = {"field": "value", "type": "quantitative", "title": y_title, "scale": y_scale,
         "axis": {"format": axis_format(*_y_range(d, log_scale), log_scale=log_scale)}}
    points = data("points", d.points)
    main = []
    if len(d.members):
        # A group's members under its line: thin, in the group's colour.
        main.append({"data": data("members", d.members), "transform": [SHOWN],
                     "mark": {"type": "line", "clip": True, "strokeWidth": MEMBER_WIDTH,
                              "opacity": MEMBER_OPACITY},
                     "encoding": {"x": x, "y": y, "color": color,
                                  "detail": {"field": "piece"},
                                  "tooltip": [{"field": "member", "title": "run"},
                                              {"field": "run", "title": "group"},
                                              {"field": "x", "type": "quantitative",
                                               "title": x["title"]},
                                              {"field": "value", "type": "quantitative",
                                               "title": title(m), "format": NUMBER}]}})
    # Smoothed, the raw line stays in full colour (a faded line falls below 3:1 against
    # the background, in dark mode most) and is told apart by being thinner.
    main += [{"data": points, "transform": [SHOWN],
             "mark": {"type": "line", "clip": True,
                      "strokeWidth": RAW_UNDER_SMOOTH if smoothing > 0 else 1.5},
             "encoding": {"x": x, "y": y, "color": color, "detail": {"field": "piece"}}}]
    if d.points["lo"].notna().any():
        main.insert(0, {"data": points,
                        "transform": [{"filter": "datum.lo != null"}, SHOWN],
                        "mark": {"type": "area", "clip": True, "opacity": 0.18},
                        "encoding": {"x": x, "y": {**y, "field": "lo"}, "y2": {"field": "hi"},
                                     "color": color, "detail": {"field": "piece"}}})
    if smoothing > 0:
        main.append({"data": points, "transform": [SHOWN],
                     "mark": {"type": "line", "clip": True, "strokeWidth": SMOOTH_WIDTH},
                     "encoding": {"x": x, "y": {**y, "field": "smooth"}, "color": color,
                                  "detail": {"field": "piece"}}})
    if len(d.points) <= VISIBLE_POINTS:
        main.append({"data": points, "transform": [SHOWN],
                     "mark": {"type": "circle", "size": 22, "clip": True, "opacity": 0.8},
                     "encoding": {"x": x, "y": y, "color": color}})
    if len(d.validation):
        main += _validation_layers(data("validation", d.validation), x, y, color,
                                   band="lo" in d.validation
                                   and bool(d.validation["lo"].notna().any()))
    # Hover: the runs' values at the x under the pointer, on every chart at once. Taken
    # from the one-row-per-x hover table (not from every point), so a pointer move
    # filters a few hundred rows, then unfolds the one row into a dot per run.
    hover = data("hover", d.hover)
    keys = [f"{kind}{k}" for kind in "vw" for k in range(len(labels))
            if f"{kind}{k}" in d.hover]   # v: the run's value, w: its held-out one
    if keys:
        # Named: the tooltip finds the run nearest the pointer among these dots.
        main.append({"name": f"dots_{m}", "data": hover, "transform": [
            {"filter": {"param": "hover", "empty": False}},
            {"fold": keys, "as": ["key", "value"]},
            {"filter": "isValid(datum.value)"},
            {"calculate": f"{json.dumps([labels[int(k[1:])] for k in keys])}"
                          f"[indexof({json.dumps(keys)}, datum.key)]", "as": "run"},
            SHOWN],
            "mark": {"type": "circle", "size": 70, "clip": True, "stroke": "white",
                     "opacity": 1},
            "encoding": {"x": x, "y": y, "color": color}})
    main.append({"data": hover, "mark": {"type": "rule", "color": RULE_COLOR},
                 "encoding": {"x": x, "opacity": {"condition": {"param": "hover",
                                                                "empty": False, "value": 1},
                                                  "value": 0}}})
    # The browser writes the hover tooltip itself (chart_component.js hoverTooltip: no
    # row for a run without a value there, rows by value, the run nearest the pointer
    # first); these fields are what it starts from.
    tooltip = [{"field": "at", "type": "nominal", "title": "at"}] + [
        {"field": f"v{k}", "type": "quantitative", "title": label, "format": NUMBER}
        for k, label in enumerate(labels) if f"v{k}" in d.hover] + [
        {"field": f"w{k}", "type": "quantitative", "title": f"{label} · validation",
         "format": NUMBER}
        for k, label in enumerate(labels) if f"w{k}" in d.hover] + [
        {"field": f"n{k}", "type": "quantitative", "title": f"{label} · runs with a value",
         "format": "d"}
        for k, label in enumerate(labels) if f"n{k}" in d.hover]
    main.append({"name": names["hover"], "data": hover,
                 "mark": {"type": "rect", "opacity": 0},
                 "encoding": {"x": {**x, "field": "x_lo"}, "x2": {"field": "x_hi"},
                              "tooltip": tooltip}})
    layers = [{"layer": main}]
    edge = {"field": "edge", "type": "quantitative", "scale": {"domain": [0, 1]},
            "axis": None}
    if len(d.nonfinite):
        layers += _marker(data("nonfinite", d.nonfinite.assign(edge=0.97)), x, edge, color,
                          {"type": "point", "shape": "triangle-down", "filled": True,
                           "size": 110, "stroke": "black", "strokeWidth": 1},
                          [{"field": "run"}, {"field": "at", "title": "at"},
                           {"field": "what", "title": "non-finite"}])
    if len(d.clipped):
        layers += _marker(data("clipped", d.clipped), x, edge, color,
                          {"type": "point", "shape": "diamond", "filled": False,
                           "size": 60, "strokeWidth": 1.5},
                          [{"field": "run"}, {"field": "what", "title": "value"}])
    if len(d.flags):
        layers += _marker(data("flags", d.flags.assign(edge=0.03)), x, edge, color,
                          {"type": "point", "shape": "diamond", "filled": True,
                           "size": 130, "stroke": "black", "strokeWidth": 1},
                          [{"field": "run"}, {"field": "rule"},
                           {"field": "message", "title": "anomaly"}])
    if len(d.resumes):
        layers += _marker(data("resumes", d.resumes), x, None, color,
                          {"type": "rule", "strokeDash": [5, 4], "strokeWidth": 1.5},
                          [{"field": "run"}, {"field": "what", "title": "resume"}])
    # The zoom selection lives on the first layer (its param names these views).
    main[0]["name"] = names["zoom"]
    subtitle = []
    if d.missing:
        subtitle.append("not recorded: " + ", ".join(d.missing))
    subtitle += d.notes
    chart = {"title": {"text": title(m), "subtitle": subtitle or "", "anchor": "start"},
             "height": HEIGHT,
             "layer": layers, "resolve": {"scale": {"y": "independent"}}}
    return chart, names


def _validation_layers(data: dict, x: dict, y: dict, color: dict, *,
                       band: bool = False) -> list[dict]:
    """The runs' held-out values: a dashed line in each run's colour (the style legend
    says which line is which) and a hollow dot at each value, so that a single
    evaluation shows too; ``band``: a group's, over its members' lowest to highest
    held-out value (lo, hi), as its training line has."""
    dash = {"datum": list(KINDS)[1], "type": "nominal", "title": None,
            "scale": {"domain": list(KINDS), "range": list(KINDS.values())},
            "legend": {"symbolStrokeColor": RULE_COLOR, "symbolStrokeWidth": 2}}
    under = [{"data": data, "transform": [{"filter": "datum.lo != null"}, SHOWN],
              "mark": {"type": "area", "clip": True, "opacity": 0.1},
              "encoding": {"x": x, "y": {**y, "field": "lo"}, "y2": {"field": "hi"},
                           "color": color, "detail": {"field": "piece"}}}] if band else []
    return [*under, {"data": data, "transform": [SHOWN],
             "mark": {"type": "line", "clip": True, "strokeWidth": 1.5},
             "encoding": {"x": x, "y": y, "color": color, "detail": {"field": "piece"},
                          "strokeDash": dash}},
            {"data": data, "transform": [SHOWN],
             "mark": {"type": "point", "filled": False, "size": 30, "clip": True},
             "encoding": {"x": x, "y": y, "color": color}}]


def _marker(data: dict, x: dict, y: dict | None, color: dict, mark: dict,
            tooltip: list[dict]) -> list[dict]:
    """A layer of markers (NaN/Inf, clipped points, flags, resume lines) and, over it, the
    same markers as invisible targets of HIT_PX across that show its tooltip: the
    visible ones are a few pixels wide, too small to hover."""
    position = {"x": x, **({"y": y} if y else {})}
    # (A band for a line: Vega bounds a transparent stroke by its line alone.)
    hit = ({"type": "rect", "width": HIT_PX, "opacity": 0} if mark["type"] == "rule"
           else {"type": "point", "shape": "circle", "filled": True, "opacity": 0,
                 "size": HIT_PX * HIT_PX})
    return [{"data": data, "transform": [SHOWN], "mark": mark,
             "encoding": {**position, "color": color}},
            {"data": data, "transform": [SHOWN], "mark": hit,
             "encoding": {**position, "tooltip": tooltip}}]
