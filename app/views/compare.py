"""Compare runs: loss, gradient norm and LR overlaid; anomalies, resumes; config diff."""

import json

import pandas as pd
import streamlit as st

import charts
import formats
import reads
import sidebar
from hlbd import compare

LIVE_SECONDS = 5

st.title("Compare runs")
url = sidebar.database_url()
thresholds = sidebar.thresholds()
runs = {r["run_id"]: r for r in reads.runs(url, thresholds)}
chosen = [runs[i] for i in sidebar.picked() if i in runs]
if not chosen:
    st.info("Pick runs to compare in the sidebar (or select rows on the Runs page)."
            if runs else f"No runs in `{url}` yet. {reads.FIRST_RUN_HELP}")
    st.stop()

left, middle, right = st.columns([2, 2, 1])
x_axis = left.radio("x axis", list(charts.X_AXES), format_func=charts.X_AXES.get,
                    horizontal=True, key="x_axis")
smoothing = middle.slider("Smoothing (TensorBoard's debiased EMA; 0 = off)", 0.0, 0.99, 0.0,
                          0.01, key="smoothing")
log_scale = right.multiselect("Log scale", list(charts.METRICS), default=["grad_norm"],
                              format_func=charts.METRICS.get, key="log_scale")


def load_series(run_ids: list[str]) -> list[charts.RunSeries]:
    """The picked runs' records, re-read only for runs whose version changed."""
    current = {r["run_id"]: r for r in reads.runs(url, thresholds)}
    picked = [current[i] for i in run_ids if i in current]
    buckets = (reads.step_buckets(url, tuple((r["run_id"], r["version"]) for r in picked))
               if x_axis == "step" else [])
    return [charts.RunSeries(
        run_id=r["run_id"], label=sidebar.label(r), created_at=r["created_at"],
        epochs=reads.epochs(url, r["run_id"], r["version"]),
        buckets=[b for b in buckets if b["run_id"] == r["run_id"]],
        segments=reads.segments(url, r["run_id"], r["version"]),
        flags=reads.flags(url, r["run_id"], r["version"], thresholds),
    ) for r in picked]


def config_table(run_ids: list[str]) -> pd.DataFrame:
    configs = {sidebar.label(runs[i]): reads.run(url, i, runs[i]["version"])["config"]
               for i in run_ids}
    diff = compare.config_diff(configs)
    return pd.DataFrame(
        [[_cell(v) for v in values.values()] for values in diff.values()],
        index=list(diff), columns=list(configs))


def _cell(value) -> str:
    if value is None:
        return "not recorded"
    return value if isinstance(value, str) else json.dumps(value)


@st.fragment(run_every=LIVE_SECONDS if any(r["display_status"] == "running"
                                           for r in chosen) else None)
def charts_and_flags(run_ids: list[str]) -> None:
    with reads.errors_shown():
        series = load_series(run_ids)
        labels = [s.label for s in series]
        for metric in charts.METRICS:
            data = charts.chart_data(series, metric, x_axis, smoothing)
            st.altair_chart(charts.metric_chart(
                data, metric, labels, smoothing=smoothing,
                log_scale=metric in log_scale), width="stretch")
        notes = [("Triangles on the top edge: NaN/Inf values (the line breaks there). "
                  "Black diamonds on the bottom edge: anomaly flags. Dashed lines: resumes.")]
        if x_axis == "step" and any(s.buckets and s.buckets[0]["width"] > 1 for s in series):
            notes.append(f"Long step series are downsampled in the database to about "
                         f"{compare.DEFAULT_MAX_POINTS} points per run: each point is the "
                         "mean of a bucket of steps, the band its min and max.")
        if x_axis == "wall":
            notes.append("Per-step rows carry no timestamp, so wall time is drawn from the "
                         "epoch records (when each epoch was recorded).")
        st.caption(" ".join(notes))
        flags = [dict(run=s.label, **{k: f[k] for k in ("epoch", "step", "rule", "value",
                                                         "threshold", "message")})
                 for s in series for f in s.flags]
        st.subheader(f"Anomalies ({len(flags)})")
        if flags:
            st.dataframe(formats.table(flags, ("value", "threshold")), hide_index=True,
                         width="stretch")
        else:
            st.caption("No flags on the picked runs' epoch records.")


charts_and_flags([r["run_id"] for r in chosen])
st.subheader("Config differences")
if len(chosen) < 2:
    st.caption("Pick at least two runs to see how their configs differ.")
else:
    diff = config_table([r["run_id"] for r in chosen])
    if diff.empty:
        st.caption("The picked runs have identical configs.")
    else:
        st.dataframe(diff, width="stretch")
