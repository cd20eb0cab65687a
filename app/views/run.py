"""One run in detail: facts, attempts (segments), checkpoints, datasets, config, epochs."""

import pandas as pd
import streamlit as st

import charts
import formats
import reads
import sidebar

LIVE_SECONDS = 5
EPOCH_MEASURES = ("loss", "grad_norm", "grad_norm_max", "grad_norm_min", "steps",
                  "nonfinite_steps", "clipped_steps", "skipped_steps", "lr", "token_accuracy",
                  "wall_seconds", "tokens", "tokens_per_second")

st.title("Run detail")
url = sidebar.database_url()
thresholds = sidebar.thresholds()
runs = {r["run_id"]: r for r in reads.runs(url, thresholds)}
if not runs:
    st.info(f"No runs in `{url}` yet. {reads.FIRST_RUN_HELP}")
    st.stop()
options = list(runs)
first = next((i for i in sidebar.picked() if i in runs), options[0])
run_id = st.selectbox("Run", options, index=options.index(first),
                      format_func=lambda i: sidebar.label(runs[i]))


@st.fragment(run_every=LIVE_SECONDS if runs[run_id]["display_status"] == "running" else None)
def detail(run_id: str) -> None:
    with reads.errors_shown():
        summary = {r["run_id"]: r for r in reads.runs(url, thresholds)}[run_id]
        version = summary["version"]
        run = reads.run(url, run_id, version)
        beat = run.get("heartbeat_at")
        heartbeat = f"{beat:%Y-%m-%d %H:%M:%S} UTC" if beat else "not recorded"
        st.markdown(f"**{run['name']}** `{run_id}` · status **{run['display_status']}** · "
                    f"source {run['source']} · created {run['created_at']:%Y-%m-%d %H:%M:%S}"
                    f" UTC · last heartbeat {heartbeat}")
        if run.get("run_dir"):
            st.caption(f"Run folder: `{run['run_dir']}`")
        if run.get("error"):
            st.error(f"The run failed: {run['error']}")

        st.subheader("Attempts (segments)")
        segments = reads.segments(url, run_id, version)
        st.dataframe(pd.DataFrame(segments).drop(columns=["run_id"]), hide_index=True,
                     width="stretch")
        st.caption("start_epoch: the checkpoint epoch an attempt continued from (0 = the "
                   "start). Epochs an earlier attempt recorded after it are kept, marked "
                   "superseded, and hidden from the charts.")

        flags = reads.flags(url, run_id, version, thresholds, with_steps=True)
        series = charts.RunSeries(run_id, sidebar.label(summary), run["created_at"],
                                  reads.epochs(url, run_id, version), [], segments, flags)
        columns = st.columns(3)
        for column, metric in zip(columns, charts.METRICS):
            data = charts.chart_data([series], metric, "epoch")
            column.altair_chart(charts.metric_chart(data, metric, [series.label]),
                                width="stretch")

        st.subheader(f"Anomalies ({len(flags)})")
        if flags:
            st.dataframe(formats.table(flags, ("value", "threshold")).drop(columns=["run_id"]),
                         hide_index=True, width="stretch")
        else:
            st.caption("No flags.")

        st.subheader("Epochs")
        epochs = reads.epochs(url, run_id, version, include_superseded=True)
        if epochs:
            st.dataframe(formats.table(epochs, EPOCH_MEASURES).drop(columns=["run_id"]),
                         hide_index=True, width="stretch")
            st.caption("nan: a measured NaN. Rows with superseded_by set were replaced by a "
                       "later attempt (they stay in the store, out of the charts).")
        else:
            st.caption("No epochs recorded yet.")

        left, right = st.columns(2)
        left.subheader("Checkpoints")
        checkpoints = reads.checkpoints(url, run_id, version)
        if checkpoints:
            left.dataframe(pd.DataFrame(checkpoints).drop(columns=["run_id", "id"]),
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


detail(run_id)
