"""Hyperparameters: the picked runs' exact match per module / level side by side, and
every run's numeric config against its summaries, in parallel coordinates and a
scatter, where a brush picks runs."""

from __future__ import annotations

import json
import math

import pandas as pd
import streamlit as st

import formats
import hyperparams
import reads
import sidebar
from hyperparams import EXACT, SUMMARIES

# The page's controls in its link (link.url_params adds what LINKED holds): at=best|last
# (exact match), axes=KEY,... (parallel coordinates), sx=KEY and sy=SUMMARY (scatter),
# slog=1 (its log y). A value the page cannot show is ignored.
LINKED = "params_link"


def from_link() -> dict[str, str]:
    """What the followed link says of the controls: read when the page opens (from a
    link, or from another page), then kept while it stays open, so each control's
    default stays the same while the user changes it."""
    if st.session_state.get("link_page") != "params":
        st.session_state["params_from_link"] = {
            k: v for k, v in st.query_params.items() if k in ("at", "axes", "sx", "sy", "slog")}
    return st.session_state.get("params_from_link", {})


st.title("Hyperparameters")
linked = from_link()
written: dict[str, str] = {}
url, thresholds, runs = sidebar.page_runs()


def exact_values(run: dict) -> tuple[dict[str, dict[int, float]], dict[int, float]]:
    """The run's exact-match series (name -> epoch -> value) and its val_loss by epoch."""
    keys = reads.point_keys(url, run["run_id"], run["version"])

    def by_epoch(key: str) -> dict[int, float]:
        return {p["epoch"]: p["value"] for p in
                reads.points(url, run["run_id"], run["version"], key)
                if p["scope"] == "epoch"}

    return ({k: by_epoch(k) for k in hyperparams.exact_keys(keys)},
            by_epoch("val_loss") if "val_loss" in keys else {})


def exact_table(chosen: list[dict], at: str) -> pd.DataFrame:
    """Exact match per name (rows) of each run (columns) at its best epoch (lowest
    val_loss) or its last evaluated one; the epoch is the first row."""
    columns, names = {}, []
    for run in chosen:
        values, val_losses = exact_values(run)
        epoch = (hyperparams.best_epoch(val_losses) if at == "best"
                 else hyperparams.last_evaluated(values))
        names += [k for k in values if k not in names]
        columns[sidebar.label(run)] = {"epoch": epoch, **{
            k: v.get(epoch) for k, v in values.items()}}
    names = hyperparams.exact_keys(names)
    frame = pd.DataFrame({label: formats.measured([c.get(n) for n in ["epoch", *names]])
                          for label, c in columns.items()})
    frame.index = ["epoch", *names]
    return frame


st.subheader("Exact match per module / level")
chosen = [runs[i] for i in sidebar.picked() if i in runs]
with reads.errors_shown():
    if not chosen:
        st.caption("Pick runs in the sidebar (or with a brush below) to see their exact "
                   "match side by side.")
    else:
        at = st.segmented_control(
            "At", ["best", "last"], default="last" if linked.get("at") == "last" else "best",
            key="exact_at", format_func={"best": "best epoch (lowest val loss)",
                                         "last": "last evaluated epoch"}.get) or "best"
        if at != "best":
            written["at"] = at
        table = exact_table(chosen, at)
        if len(table) == 1:
            st.caption("None of the picked runs recorded held-out exact match "
                       f"(`{EXACT}`: `hlbd train` with a held-out split records it).")
        formats.show(table, width="stretch")
        st.caption("Greedy-decoded exact match on each run's held-out pairs, overall and "
                   "per module (Hardcore files) or level (Full files). A run without "
                   "val_loss has no best epoch: not recorded.")


PICKED, OTHER = "#e4572e", "#8a8f98"   # picked runs' lines and dots; the others'
BRUSHED = "#1f77b4"
EDGE_PX = 24   # room between a plot's edge and the dots on its domain's ends


def pick(run_ids: list[str]) -> None:
    """The runs a brush covers become the sidebar's picked runs (a button's callback:
    it runs before the sidebar is drawn)."""
    st.session_state["picked"] = list(run_ids)


def pick_action(covered: list[str], key: str) -> None:
    """Say which runs the brush covers and offer to pick them."""
    if not covered:
        st.caption("Drag across the chart to brush runs; the ones it covers can become "
                   "the picked runs.")
        return
    names = ", ".join(sidebar.label(runs[i]) for i in covered)
    st.markdown(f"Brushed {len(covered)} run(s): {names}")
    st.button(f"Pick these {len(covered)} runs", key=f"pick_{key}", on_click=pick,
              args=(covered,), help="They become the sidebar's runs to compare.")


def selection(key: str, param: str = "brush") -> dict | None:
    """The brush of the chart ``key`` as its widget state holds it (field -> range)."""
    try:
        return dict(st.session_state[key]["selection"][param]) or None
    except (KeyError, TypeError):
        return None


def parallel_spec(axes: list[str], ranges: list[str]) -> dict:
    """One line per run through its dots, one unit (a brush works there); each axis
    labelled with its name and its lowest to highest value."""
    run = {"field": "label", "type": "nominal", "title": "run"}
    names = [f"{a} ({r})" for a, r in zip(axes, ranges, strict=True)]
    # Each axis at its index on a quantitative x (a brush cannot span an ordinal one).
    x = {"field": "x", "type": "quantitative", "title": None,
         "scale": {"domain": [-0.25, len(axes) - 0.75], "nice": False, "zero": False},
         "axis": {"values": list(range(len(axes))), "orient": "top", "grid": True,
                  "labelExpr": f"{json.dumps(names)}[datum.value]", "labelLimit": 220,
                  "labelFontWeight": "bold", "labelFlush": False,
                  # Every axis named: side by side, Vega hid the labels that overlapped
                  # (4 of 9 at 1440 px); tilted, each has its own room.
                  "labelOverlap": False, "labelAngle": -30, "labelAlign": "left",
                  "labelBaseline": "middle"}}
    y = {"field": "norm", "type": "quantitative", "axis": None,
         "scale": {"domain": [0, 1], "padding": EDGE_PX}}
    tooltip = [run, {"field": "axis", "title": "axis"},
               {"field": "value", "type": "quantitative", "format": ".6~g"}]
    return {
        "height": 340,
        "mark": {"type": "line", "invalid": "break-paths-show-domains",
                 "strokeWidth": 1.5, "point": {"size": 50, "filled": True}},
        "params": [{"name": "brush", "select": {"type": "interval",
                                                "encodings": ["x", "y"]}}],
        "encoding": {"x": x, "y": y, "detail": {"field": "run"}, "tooltip": tooltip,
                     "color": {"condition": {"test": "datum.picked", "value": PICKED},
                               "value": OTHER},
                     "opacity": {"condition": {"test": "datum.picked", "value": 0.95},
                                 "value": 0.5}},
    }


def scatter_spec(x_title: str, y_title: str, log_y: bool = False) -> dict:
    run = {"field": "label", "type": "nominal", "title": "run"}
    return {
        "height": 320,
        "mark": {"type": "circle", "size": 90},
        "params": [{"name": "brush", "select": {"type": "interval",
                                                "encodings": ["x", "y"]}}],
        "encoding": {
            # Padding: a dot on the domain's edge stays inside the plot, where a brush
            # can take it in.
            "x": {"field": "x", "type": "quantitative", "title": x_title,
                  "scale": {"zero": False, "padding": EDGE_PX}},
            "y": {"field": "y", "type": "quantitative", "title": y_title,
                  "scale": {"zero": False, "padding": EDGE_PX,
                            **({"type": "log"} if log_y else {})}},
            "color": {"condition": {"param": "brush", "empty": False, "value": BRUSHED},
                      "value": OTHER},
            "stroke": {"condition": {"test": "datum.picked", "value": PICKED},
                       "value": None},
            "strokeWidth": {"value": 2.5},
            "tooltip": [run, {"field": "x", "type": "quantitative", "title": x_title,
                              "format": ".6~g"},
                        {"field": "y", "type": "quantitative", "title": y_title,
                         "format": ".6~g"}]},
    }


def finite(value) -> bool:
    return value is not None and math.isfinite(value)


def run_values() -> dict[str, dict[str, float | None]]:
    """Each run's numeric config and summaries, by run id."""
    out = {}
    for r in runs.values():
        summaries = {name: (None if r.get(field) is None else float(r[field]))
                     for name, field in SUMMARIES.items()}
        out[r["run_id"]] = {**hyperparams.numeric_config(r.get("config")), **summaries}
    return out


with reads.errors_shown():
    values = run_values()
    picked = set(sidebar.picked())
    config_keys = list(dict.fromkeys(k for v in values.values() for k in v
                                     if k not in SUMMARIES))
    varying = hyperparams.varying([{k: v[k] for k in config_keys if v.get(k) is not None}
                                   for v in values.values()])

    st.subheader("Parallel coordinates")
    default_axes = [*varying[:8], "best val loss", "last loss"]
    named = [a for a in linked.get("axes", "").split(",") if a in [*config_keys, *SUMMARIES]]
    axes = st.multiselect(
        "Axes", [*config_keys, *SUMMARIES],
        # (axes= is none; axes=nope names none the page has and is ignored)
        default=named if named or linked.get("axes") == "" else default_axes,
        key="parallel_axes",
        help="Config keys (nested ones joined by /) and run summaries; by default the "
             "config keys that differ between runs.")
    if axes != default_axes:
        written["axes"] = ",".join(axes)
    if axes:
        rows = hyperparams.parallel_rows(values, axes)
        for row in rows:
            row["x"] = axes.index(row["axis"])
            row["label"] = sidebar.label(runs[row["run"]])
            row["picked"] = row["run"] in picked
        st.vega_lite_chart(pd.DataFrame(rows), parallel_spec(axes, [
            hyperparams.value_range(rows, a) for a in axes]),
                                   on_select="rerun", selection_mode="brush",
                                   key="parallel", width="stretch")
        st.caption("One line per run; each axis from its lowest value (bottom) to its "
                   "highest (top), its range beside its name. A line breaks at an axis "
                   "the run did not record. Picked runs in orange. Drag a box around dots "
                   "to brush runs.")
        pick_action(hyperparams.brushed(selection("parallel"), rows), "parallel")
    else:
        st.caption("Pick at least one axis.")

    st.subheader("Scatter")
    left, right, scale = st.columns([2, 2, 1], vertical_alignment="bottom")
    x_first = config_keys.index(varying[0]) if varying else 0
    x_key = left.selectbox("x: config key", config_keys or [None], key="scatter_x",
                           index=config_keys.index(linked["sx"])
                           if linked.get("sx") in config_keys else x_first)
    y_key = right.selectbox("y: summary", list(SUMMARIES), key="scatter_y",
                            index=list(SUMMARIES).index(linked["sy"])
                            if linked.get("sy") in SUMMARIES else 0)
    if config_keys and x_key != config_keys[x_first]:
        written["sx"] = x_key
    if y_key != next(iter(SUMMARIES)):
        written["sy"] = y_key
    log_y = scale.toggle("Log y", key="scatter_log", value=linked.get("slog") == "1",
                         help="One exploded run (a loss in the thousands) flattens the "
                              "others on a linear axis; values at or below 0 cannot be "
                              "drawn on a log one and are left out, said below.")
    if x_key is None:
        st.caption("No run has a numeric config.")
    else:
        points = [{"run": i, "label": sidebar.label(runs[i]), "x": v.get(x_key),
                   "y": v.get(y_key), "picked": i in picked} for i, v in values.items()]
        placed = [p for p in points if finite(p["x"]) and finite(p["y"])]
        not_positive = sum(p["y"] <= 0 for p in placed) if log_y else 0
        placed = [p for p in placed if not log_y or p["y"] > 0]
        st.vega_lite_chart(pd.DataFrame(placed, columns=list(points[0])),
                           scatter_spec(x_key, y_key, log_y), on_select="rerun",
                           selection_mode="brush", key="scatter", width="stretch")
        left_out = len(points) - len(placed) - not_positive
        st.caption("One dot per run; picked runs ringed in orange. Drag a box to brush "
                   "runs." + (f" {left_out} run(s) whose {x_key} or {y_key} is not "
                              "recorded (or NaN/Inf) are not drawn." if left_out else "")
                   + (f" {not_positive} run(s) whose {y_key} is at or below 0 are not "
                      "drawn on the log scale." if not_positive else ""))
        pick_action(hyperparams.brushed(selection("scatter"), placed), "scatter")
    if log_y:
        written["slog"] = "1"
st.session_state[LINKED] = written
