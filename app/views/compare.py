"""Compare runs: every recorded metric overlaid on one x axis; anomalies, resumes; config diff."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import charts
import debounced_slider
import formats
import groups
import link
import live
import reads
import series
import sidebar
import vega_component
from hlbd.config import config_diff
from hlbd.store.buckets import bucket_width
from series import (
    POINT,
    SMOOTHED,
    MetricData,
    RunSeries,
    fixed_y_range,
    metric_data,
    read_keys,
    robust_applies,
)

# Step buckets per chart, shared by the picked runs, each getting at least / at most
# POINTS_PER_RUN. A full-width plot is 850-1000 px wide on a 1400-1600 px window: 500
# buckets is one per two pixels or so, and each bucket's min-max band shows every
# extreme in it; zooming in reads finer buckets. The browser's time grows with points.
POINTS = 6_000
POINTS_PER_RUN = (250, 500)
SLIDER_PX = 280   # the smoothing slider's width: a value per 3 px

st.title("Compare runs")
vega_component.preload()
url, thresholds, runs = sidebar.page_runs(stop_when_none=False)
chosen = [runs[i] for i in sidebar.picked() if i in runs]
if not chosen:
    st.info("Pick runs to compare in the sidebar (or tick rows on the Runs page)."
            if runs else f"No runs in `{url}` yet. {reads.FIRST_RUN_HELP}")
    st.stop()


def controls(chosen: list[dict]) -> list[str]:
    """The row of controls over the charts (into the link); returns the charts a user
    can pick."""
    # The controls wrap onto more lines as the page narrows (an 800 px window, the
    # sidebar open), never cut: each takes its own width in a row that wraps; the pills
    # fill theirs.
    top = st.container(horizontal=True, wrap=True, gap="medium")
    # The recorded metrics, then every name a picked run logged of its own (lr/1,
    # eval/loss, tokens): each can be charted, and can be the x axis.
    own = sorted({POINT + key for r in chosen
                  for key in reads.point_keys(url, r["run_id"], r["version"])})
    if link.get("x") not in [*series.X_AXES, *own]:  # a name no picked run logged
        link.put("x", "epoch")
    # Epoch, step, wall time as buttons; a name the runs logged from a list beside them
    # (runs log many: as buttons they would not fit). The one changed last is the axis.
    top.segmented_control(
        "x axis", list(series.X_AXES), format_func=series.X_AXES.get, key="x_axis",
        default=link.get("x") if link.get("x") in series.X_AXES else None,
        on_change=pick_x_axis, args=("x_axis",))
    if own:
        top.selectbox(
            "or a name the runs logged", own, format_func=charts.title, key="x_logged",
            index=own.index(link.get("x")) if link.get("x") in own else None,
            placeholder="x axis from a logged name", on_change=pick_x_axis,
            args=("x_logged",), width=220,
            help="Each step's values at that name's value logged at the same step, each "
                 "epoch's at its value at the epoch's close.")
    with top:
        link.put("smooth", round(debounced_slider.slider(
            "Smoothing of loss and grad norm", 0.0, 0.99, link.get("smooth"), 0.01,
            key="smoothing", width=SLIDER_PX,
            help="TensorBoard's debiased EMA (0 = off), drawn over the raw line. The LR "
                 "is never smoothed."), 2))
    # Next to the double-click on a chart, a button that says it.
    top.button("Reset zoom", key="reset_zoom", disabled=link.get("range") is None,
               on_click=link.put, args=("range", None),
               help="Back to the whole x range (as a double-click on a chart).")
    link.put("robust", top.toggle(
        "Robust y range", value=link.get("robust"), key="robust",
        help="Fit the y range to the calm runs: a run whose typical values are more than "
             "10 times the calmest run's has exploded and no longer flattens the others; "
             "its points beyond the range are marked on the chart's edge. Never applied "
             "to the LR, token accuracy or tokens/s."))
    available = [*charts.METRICS, *own]
    link.put("charts", st.pills(
        "Charts", available, selection_mode="multi",
        default=[m for m in link.get("charts") if m in available],
        format_func=charts.title, key="metrics", width="stretch") or [])
    link.put("log", st.pills(
        "Log scale", link.get("charts"), selection_mode="multi",
        default=[m for m in link.get("log") if m in link.get("charts")],
        format_func=charts.title, key="log_scale", width="stretch") or [])
    y_range_inputs()
    group_controls()
    return available


def group_controls() -> None:
    """Grouping (app/groups.py): runs of one group drawn as one line, its mean with a
    min-max band; seeds of one config become one line."""
    grouped = st.container(horizontal=True, gap="medium", vertical_alignment="bottom")
    group_choices = groups.choices(chosen)
    link.put("group", grouped.selectbox(
        "Group runs by", group_choices, format_func=groups.title, key="group_by", width=260,
        index=group_choices.index(link.get("group")) if link.get("group") in group_choices else 0,
        help="A line per group: at each x the mean of its members' values there, the band "
             "their lowest to highest; a member without a value there is not counted (the "
             "hover says of how many runs)."))
    link.put("members", grouped.toggle(
        "Show members", value=link.get("members"), key="group_members",
        disabled=not link.get("group"), help="Each run of a group as a thin line under it."))
    link.put("tag_colors", grouped.toggle(
        "Colour by tags", value=link.get("tag_colors"), key="tag_colors",
        disabled=bool(link.get("group")), help="A line per run, runs with the same tags in one "
                                               "colour."))


def pick_x_axis(key: str) -> None:
    """The x axis as the control under ``key`` was just set (the other one is cleared);
    a zoom on the old axis means nothing on the new one."""
    chosen = st.session_state.get(key)
    if not chosen or chosen == link.get("x"):
        return
    link.put("x", chosen)
    link.put("range", None)
    st.session_state["x_logged" if key == "x_axis" else "x_axis"] = None


def y_range_inputs() -> None:
    """Each picked chart's y range as the user sets it (an end left empty: where the
    values reach), into the link; one that cannot be drawn says why and is not used."""
    ranges = {}
    with st.popover("Y range per chart"):
        for m in link.get("charts"):
            low, high = link.get("y").get(m, (None, None))
            left, right = st.columns(2)
            low = left.number_input(f"{charts.title(m)}: from", value=low, format="%g",
                                    key=f"y_low_{m}", placeholder="automatic")
            high = right.number_input("to", value=high, format="%g", key=f"y_high_{m}",
                                      placeholder="automatic")
            if low is None and high is None:
                continue
            if low is not None and high is not None and not low < high:
                st.warning(f"{charts.title(m)}: the range's start must be below its end.")
            elif m in link.get("log") and ((low is not None and low <= 0)
                                           or (high is not None and high <= 0)):
                st.warning(f"{charts.title(m)}: a log scale starts above 0.")
            else:
                ranges[m] = [low, high]
    link.put("y", ranges)

def zoom_from_chart() -> None:
    """A drag on a chart zooms every chart to its x range; a double-click goes back."""
    event = vega_component.zoom_event("charts")
    if event is not None:
        span = event.get("x")
        link.put("range", (float(min(span)), float(max(span))) if span else None)


def hidden_in_legend(grouping: groups.Grouping | None) -> list[str]:
    """The legend entries hidden: picked runs (the link's ``hide``, run ids) and, with
    the runs grouped, groups (``hideg``, group labels); as the chart last said, else as
    the link says; the link follows. The browser keeps a run hidden while its runs are
    grouped (and its group when they are not): each comes back with its kind of line."""
    by_label = {sidebar.label(r): r["run_id"] for r in chosen}
    said = vega_component.hidden_runs("charts")
    if said is not None:
        link.put("hide", [by_label[label] for label in said if label in by_label])
        if grouping is not None:
            link.put("hide_groups", [label for label in said if label in grouping.labels])
    wanted = link.get("hide")
    hidden = [r for r in chosen if any(r["run_id"].startswith(w) for w in wanted)]
    link.put("hide", [r["run_id"] for r in hidden])
    hidden_groups = []
    if grouping is not None:
        hidden_groups = [g for g in link.get("hide_groups") if g in grouping.labels]
        link.put("hide_groups", hidden_groups)
    return [sidebar.label(r) for r in hidden] + hidden_groups


def points_per_run(count: int) -> int:
    low, high = POINTS_PER_RUN
    return max(low, min(high, POINTS // max(count, 1)))


def load_series(url: str, picked: tuple, x_axis: str, x_range, thresholds: tuple,
                own: tuple = ()) -> list[RunSeries]:
    """The picked runs' records, re-read only for runs whose version changed; ``own``:
    the names of their own to read (charts picked).

    ``picked``: each run's (run_id, version, label, created_at, color)."""
    width, steps = None, None
    logged = x_axis.startswith(POINT)  # its values place each step and epoch close
    if x_axis == "step":
        spans = [reads.step_span(url, run_id, version) for run_id, version, *_ in picked]
        last = max((s["last_step"] for s in spans if s), default=1)
        low, high = (max(1, int(x_range[0])), int(x_range[1]) + 1) if x_range else (1, last)
        width = bucket_width(high - low + 1, points_per_run(len(picked)))
        steps = (low, high) if x_range else None
    return [RunSeries(
        run_id=run_id, label=label, created_at=created_at,
        epochs=reads.epochs(url, run_id, version),
        buckets=reads.step_buckets(url, run_id, version, width, steps) if width else None,
        segments=reads.segments(url, run_id, version),
        flags=reads.flags(url, run_id, version, thresholds),
        epoch_steps=(reads.epoch_steps(url, run_id, version)
                     if x_axis == "step" or logged else []),
        color=color,
        points={key: reads.points(url, run_id, version, key) for key in own},
    ) for run_id, version, label, created_at, color in picked]


@st.cache_data(ttl=reads.RUN_TTL, max_entries=32, show_spinner=False)
def chart(url: str, picked: tuple, x_axis: str, x_range, metrics: tuple, smoothing: float,
          log: tuple, robust: bool, thresholds: tuple,
          y_ranges: tuple = (), grouping: groups.Grouping | None = None,
          ) -> tuple[dict | None, int | None]:
    """What the component draws (charts.payload; None without metrics), and the width
    of the step buckets drawn (None when none are).

    Cached across sessions and keyed by everything the charts show, the picked runs'
    versions included (``picked`` as in load_series): a new session opening the same
    link gets the charts built once, and a run with news is read and drawn anew. A
    change that leaves a chart's own data as it was (a smoothing: the LR's; a chart
    added: the others') takes that chart's from metric_chart_data's cache.
    ``y_ranges``: (metric, low, high) of the charts whose y range the user set.
    """
    # a POINT chart's name, val_loss beside loss, and a logged name on the x axis
    own = tuple(dict.fromkeys([*read_keys(metrics), *(
        [x_axis.removeprefix(POINT)] if x_axis.startswith(POINT) else [])]))
    series = load_series(url, picked, x_axis, x_range, thresholds, own)
    widths = [s.buckets["width"].iloc[0] for s in series
              if s.buckets is not None and len(s.buckets)]
    width = int(widths[0]) if widths else None
    if not metrics:
        return None, width
    fixed = {m: (low, high) for m, low, high in y_ranges}
    data = []
    for m in metrics:
        d = metric_chart_data(url, picked, x_axis, x_range, thresholds, m,
                              smoothing if m in SMOOTHED else 0.0, m in log,
                              robust and robust_applies(m), grouping, _series=series)
        data.append(fixed_y_range(d, *fixed[m]) if m in fixed else d)
    return charts.payload(charts.spec(data, series, x_axis, smoothing=smoothing,
                                      log_metrics=log, grouping=grouping)), width


@st.cache_data(ttl=reads.RUN_TTL, max_entries=64, show_spinner=False)
def metric_chart_data(url: str, picked: tuple, x_axis: str, x_range, thresholds: tuple,
                      metric: str, smoothing: float, log_scale: bool, robust: bool,
                      grouping: groups.Grouping | None, *, _series: list[RunSeries]
                      ) -> MetricData:
    """One chart's frames (series.metric_data of ``_series``, the runs load_series read
    for these arguments: not part of the key, which names them already), keyed by what
    that chart shows alone: a smoothing only where it applies, the robust range only
    where it applies."""
    return metric_data(_series, metric, x_axis, title=charts.title(metric),
                       smoothing=smoothing, log_scale=log_scale, robust=robust,
                       x_range=x_range, grouping=grouping)


def config_table(run_ids: list[str]) -> pd.DataFrame:
    configs = {sidebar.label(runs[i]): reads.run(url, i, runs[i]["version"])["config"]
               for i in run_ids}
    diff = config_diff(configs)
    return pd.DataFrame(
        [[_cell(v) for v in values.values()] for values in diff.values()],
        index=list(diff), columns=list(configs))


def _cell(value) -> str:
    if value is None:
        return formats.NOT_RECORDED
    return value if isinstance(value, str) else json.dumps(value)


@st.fragment
def chart_part() -> None:
    """The controls and the charts: a change to either reruns this part alone, not the
    page (the sidebar, the tables below), and brings the link up to date itself."""
    with reads.errors_shown():
        zoom_from_chart()  # first: the reset button shows whether a zoom is on
        available = controls(chosen)
        draw_charts(available)
    # A fragment's rerun does not reach main.py's own write_url (a full run writes the
    # same link twice; the second finds nothing to change).
    link.write_url("compare", sidebar.picked(), list(runs), dict(thresholds),
                   reads.threshold_defaults())


def draw_charts(available: list[str]) -> None:
    x_axis, x_range = link.get("x"), link.get("range")
    colors = charts.colors({r["run_id"]: r["rank"] for r in runs.values()},
                           [r["run_id"] for r in chosen])
    if link.get("tag_colors") and not link.get("group"):
        colors = groups.colors_by_tags(chosen, colors)
    grouping = groups.grouping(chosen, link.get("group"), sidebar.label, colors,
                               link.get("members"))
    payload, width = chart(
        url, tuple((r["run_id"], r["version"], sidebar.label(r), r["created_at"],
                    colors[r["run_id"]]) for r in chosen),
        x_axis, x_range, tuple(m for m in available if m in link.get("charts")),
        link.get("smooth"), tuple(link.get("log")), link.get("robust"), thresholds,
        tuple((m, low, high) for m, (low, high) in link.get("y").items()),
        grouping=grouping)
    if payload is None:
        st.info("Pick at least one chart above.")
        return
    charts.draw_payload(payload, key="charts", hidden=hidden_in_legend(grouping))
    notes = [("Drag across a chart to zoom all of them (double-click: back); hover for "
             "every run's value; click a legend entry to hide that run (again: show "
             "it)."),
             ("Triangles on the top edge: NaN/Inf (the line breaks there). Filled "
             "diamonds on the bottom edge: anomaly flags. Dashed vertical lines: resumes; "
             "dashed curves with dots: validation (held out).")]
    if x_axis == "step" and width is not None and width > 1:
        notes.append(f"Steps are shown in buckets of {width:,} (about "
                     f"{points_per_run(len(chosen)):,} points per run; zoom in for "
                     "detail): each point is a bucket's mean, the band its min and max.")
    if x_axis.startswith(POINT):
        notes.append(f"On the x axis, {charts.title(x_axis)} as each run logged it: a "
                     "step's values at its value logged at the same step, an epoch's at "
                     "its value at the epoch's close; a record without one is not drawn.")
    if x_axis == "wall":
        notes.append("Per-step rows carry no timestamp, so wall time is drawn from the "
                     "epoch records (when each epoch was recorded).")
    if x_range:
        notes.append(f"Zoomed to {x_range[0]:.6g} – {x_range[1]:.6g}.")
    st.caption(" ".join(notes))


chart_part()
with reads.errors_shown():
    flags = [dict(run=sidebar.label(r), **{k: f[k] for k in ("epoch", "step", "rule", "value",
                                                            "threshold", "message")})
             for r in chosen for f in reads.flags(url, r["run_id"], r["version"], thresholds)]
    st.subheader(f"Anomalies ({len(flags)})")
    if flags:
        formats.show(formats.table(flags, ("value", "threshold")), hide_index=True,
                     width="stretch")
    else:
        st.caption("No flags on the picked runs' records.")

st.subheader("Config differences")
if len(chosen) < 2:
    st.caption("Pick at least two runs to see how their configs differ.")
else:
    diff = config_table([r["run_id"] for r in chosen])
    if diff.empty:
        st.caption("The picked runs have identical configs.")
    else:
        st.dataframe(diff, width="stretch")
live.watch(url, thresholds, [r["run_id"] for r in chosen])
