"""Runs overview: every run with its status, losses, grad-norm extremes and anomaly flags."""

import pandas as pd
import streamlit as st

import formats
import reads
import sidebar

LIVE_SECONDS = 5

st.title("Runs")
url = sidebar.database_url()
all_runs = reads.runs(url, sidebar.thresholds())
if not all_runs:
    st.info(f"No runs in `{url}` yet. {reads.FIRST_RUN_HELP}")
    st.stop()

left, right = st.columns([1, 2])
statuses = sorted({r["display_status"] for r in all_runs})
shown_statuses = left.multiselect("Status", statuses, default=statuses, key="status_filter")
text = right.text_input("Name, id or dataset contains", placeholder="e.g. basics",
                        key="text_filter")


def matches(run: dict) -> bool:
    haystack = " ".join([run["name"], run["run_id"], *run["dataset_stats"]]).lower()
    return run["display_status"] in shown_statuses and text.lower().strip() in haystack


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


@st.fragment(run_every=LIVE_SECONDS if any(r["display_status"] == "running"
                                           for r in all_runs) else None)
def runs_table() -> None:
    runs = [r for r in reads.runs(url, sidebar.thresholds()) if matches(r)]
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
