"""One run in detail: facts, segments (each run or resume), charts, flags, epochs, checkpoints, config."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import charts
import formats
import link
import live
import reads
import sidebar
from series import RunSeries, metric_data

EPOCH_MEASURES = ("loss", "grad_norm", "grad_norm_max", "grad_norm_min", "lr",
                  "token_accuracy", "wall_seconds", "tokens_per_second")

st.title("Run detail")
url = sidebar.database_url()
thresholds = sidebar.thresholds()
runs = {r["run_id"]: r for r in reads.runs(url, thresholds)}
if not runs:
    st.info(f"No runs in `{url}` yet. {reads.FIRST_RUN_HELP}")
    st.stop()
options = list(runs)
wanted = link.get("run") or ""
first = next((i for i in options if wanted and i.startswith(wanted)),
             next((i for i in sidebar.picked() if i in runs), options[0]))
run_id = st.selectbox("Run", options, index=options.index(first), key="detail_run",
                      format_func=lambda i: sidebar.label(runs[i]))
link.put("run", run_id)


def when(value) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value is not None else formats.NOT_RECORDED


def segment_table(run: dict, segments: list[dict]) -> pd.DataFrame:
    """The segments as shown: the last one's status is the run's own when the run
    stopped without saying so (crashed, stale), its end not recorded. An imported run's
    first segment is the import: its times, process and host are the importer's, not
    the run's, so they are not recorded."""
    rows = []
    for s in segments:
        status, ended = s["status"], s["ended_at"]
        if (s is segments[-1] and status == "running"
                and run["display_status"] in ("crashed", "stale")):
            status, ended = run["display_status"], None
        imported = run["source"] == "imported" and s["segment"] == 1
        rows.append({"segment": s["segment"], "status": status,
                     "start epoch": s["start_epoch"],
                     "started (UTC)": None if imported else s["started_at"],
                     "ended (UTC)": None if imported else ended,
                     "resumed from": s["resumed_from"] or ("(the start)" if s["segment"] == 1
                                                           else None),
                     "pid": None if imported else s["pid"],
                     "host": None if imported else s["hostname"]})
    frame = pd.DataFrame(rows)
    for column in ("started (UTC)", "ended (UTC)"):
        frame[column] = pd.Series(frame[column].tolist(), dtype="datetime64[us]")
    frame["pid"] = formats.counted(frame["pid"].tolist())
    return frame


with reads.errors_shown():
    summary = runs[run_id]
    version = summary["version"]
    run = reads.run(url, run_id, version)
    imported = run["source"] == "imported"
    started = (f"imported {when(run['created_at'])}; started {formats.NOT_RECORDED}"
               if imported else f"started {when(run['created_at'])}")
    st.markdown(f"**{run['name']}** `{run_id}` · status **{run['display_status']}** · "
                f"source {run['source']} · {started} · last heartbeat "
                f"{when(run.get('heartbeat_at')) if not imported else formats.NOT_RECORDED}")
    if imported:
        written = reads.report_time(run)
        stamp = ((run.get("extra") or {}).get("report") or {}).get("timestamp")
        st.caption("Imported from an older tool's report: when its epochs were recorded is "
                   "not known. " + (f"The report says it was written at {when(written)} "
                                    f"(its timestamp: {stamp!r})." if written else
                                    "The report has no timestamp."))
    if run.get("run_dir"):
        st.caption(f"Run folder: `{run['run_dir']}`")
    if run.get("error"):
        st.error(f"The run failed: {run['error']}")

    st.subheader("Segments (each run or resume)")
    segments = reads.segments(url, run_id, version)
    formats.show(segment_table(run, segments), hide_index=True, width="stretch", column_config={
        c: st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")
        for c in ("started (UTC)", "ended (UTC)")})
    st.caption("start epoch: the checkpoint epoch a segment continued from (0 = the "
               "start). Epochs an earlier segment recorded after it are kept, marked "
               "superseded, and hidden from the charts.")

    flags = reads.flags(url, run_id, version, thresholds)
    series = RunSeries(run_id, sidebar.label(summary), run["created_at"],
                       reads.epochs(url, run_id, version), None, segments, flags,
                       color=charts.colors({run_id: summary["rank"]}, [run_id])[run_id])
    data = [metric_data([series], m, "epoch", title=charts.METRICS[m])
            for m in ("loss", "grad_norm", "lr")]
    charts.draw(charts.spec(data, [series], "epoch", zoomable=False))

    st.subheader(f"Anomalies ({len(flags)})")
    if flags:
        formats.show(formats.table(flags, ("value", "threshold")).drop(columns=["run_id"]),
                     hide_index=True, width="stretch")
    else:
        st.caption("No flags.")

    st.subheader("Epochs")
    epochs = reads.epochs(url, run_id, version, include_superseded=True)
    if epochs:
        formats.show(formats.table(epochs, EPOCH_MEASURES).drop(columns=["run_id"]),
                     hide_index=True, width="stretch")
        st.caption("NaN: a measured NaN. Rows with superseded_by set were replaced by a "
                   "later segment (they stay in the store, out of the charts). recorded_at "
                   "not recorded: an imported epoch.")
    else:
        st.caption("No epochs recorded yet.")

    left, right = st.columns(2)
    left.subheader("Checkpoints")
    checkpoints = reads.checkpoints(url, run_id, version)
    if checkpoints:
        with left:
            formats.show(pd.DataFrame(checkpoints).drop(columns=["run_id", "id"]),
                         hide_index=True, width="stretch")
    else:
        left.caption("No checkpoints recorded.")
    right.subheader("Datasets (pairs per file)")
    right.dataframe(pd.DataFrame({"dataset": list(run["dataset_stats"]),
                                  "pairs": list(run["dataset_stats"].values())}),
                    hide_index=True, width="stretch")
    st.subheader("Config")
    st.json(run["config"])
    if run.get("extra"):
        st.subheader("Extra")
        st.json(run["extra"])
live.watch(url, thresholds, [run_id])
