"""Runs overview: every run with its status, losses, grad-norm extremes and anomaly flags."""

import pandas as pd
import streamlit as st

import formats
import reads
import sidebar

LIVE_SECONDS = 5    # while a run is running
IDLE_SECONDS = 30   # otherwise (a run started elsewhere shows up)
STATUSES = ["running", "stale", "crashed", "finished", "interrupted", "failed"]

st.title("Runs")
url = sidebar.database_url()
thresholds = sidebar.thresholds()
if not reads.runs(url, thresholds):
    st.info(f"No runs in `{url}` yet. {reads.FIRST_RUN_HELP}")
    st.stop()

left, right = st.columns([3, 2])
shown_statuses = left.multiselect("Status", STATUSES, default=STATUSES, key="status_filter")
text = right.text_input("Name, id or dataset contains", placeholder="e.g. basics",
                        key="text_filter")


def matches(run: dict) -> bool:
    haystack = " ".join([run["name"], run["run_id"], *run["dataset_stats"]]).lower()
    status = run["display_status"]
    return ((status in shown_statuses or status not in STATUSES)
            and text.lower().strip() in haystack)


def table(runs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({
        "name": [r["name"] for r in runs],
        "id": [r["run_id"] for r in runs],
        "status": [r["display_status"] for r in runs],
        "started (UTC)": [r["created_at"] for r in runs],
        "epochs": [r["epochs"] for r in runs],
        "last loss": [formats.short(r["last_loss"]) for r in runs],
        "best loss": [formats.short(r["best_loss"]) for r in runs],
        "max grad norm": [formats.short(r["max_grad_norm"]) for r in runs],
        "NaN/Inf steps": [formats.short(r["nonfinite_steps"]) for r in runs],
        "anomalies": [r["anomalies"] for r in runs],
        "datasets": [", ".join(r["dataset_stats"]) for r in runs],
        "source": [r["source"] for r in runs],
    })


def pick_selected_rows() -> None:
    """Selecting rows in the table makes them the runs to compare."""
    rows = st.session_state["runs_table"]["selection"]["rows"]
    shown = st.session_state["runs_table_ids"]
    st.session_state["picked"] = [shown[i] for i in rows if i < len(shown)]
    # The selection reruns only this fragment; the sidebar must redraw to show the pick.
    st.session_state["rerun_app"] = True


@st.fragment(run_every=LIVE_SECONDS if any(r["display_status"] == "running"
                                           for r in reads.runs(url, thresholds))
             else IDLE_SECONDS)
def runs_table() -> None:
    if st.session_state.pop("rerun_app", False):
        st.rerun(scope="app")
    all_runs = reads.runs(url, thresholds)
    runs = [r for r in all_runs if matches(r)]
    st.session_state["runs_table_ids"] = [r["run_id"] for r in runs]
    st.dataframe(
        table(runs), key="runs_table", on_select=pick_selected_rows,
        selection_mode="multi-row", hide_index=True, width="stretch",
        column_config={
            "id": st.column_config.TextColumn(width="small"),
            "started (UTC)": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
        })
    st.caption(f"{len(runs)} of {len(all_runs)} runs. Select rows to compare them (or pick "
               "runs in the sidebar), then open Compare. "
               "Anomalies: flags the rules raise on the epoch records (thresholds in the "
               "sidebar).")


runs_table()
