"""Runs overview: every run with status, progress, losses, config, flags; tick to compare."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

import filters
import formats
import live
import reads
import sidebar
import table_picks
import table_sort

STATUSES = ["running", "stale", "crashed", "finished", "interrupted", "failed", "imported"]
STATUS_COLORS = ["#1f77b4", "#b07aa1", "#d62728", "#2ca02c", "#ff7f0e", "#8c564b",
                 "#7f7f7f"]
ROW_PX, MAX_ROWS_SHOWN = 35, 20

st.title("Runs")
url = sidebar.database_url()
thresholds = sidebar.thresholds()
all_runs = reads.runs(url, thresholds)
if not all_runs:
    st.info(f"No runs in `{url}` yet. {reads.FIRST_RUN_HELP}")
    st.stop()

left, right = st.columns([2, 3])
shown_statuses = left.multiselect("Status", STATUSES, default=STATUSES, key="status_filter")
text = right.text_input(
    "Filter", placeholder="e.g. basics  lr<0.01  batch_size = 16", key="text_filter",
    help="Words match the name, id or a dataset; `key<value`, `key=value`, `key!=value` "
         "(also <=, >, >=; spaces around them are fine) compare a column, its spaces "
         "written as _ (last_loss, best_loss, max_grad_norm, batch_size, world_size, "
         "epochs, ...), or a config key (lr, seed, ...). All terms must hold.")


def fields(run: dict) -> dict:
    """What a filter term can name: the table's columns (last loss as last_loss,
    duration (min) as duration_min) and the run's config."""
    out = {k: v for k, v in (run["config"] or {}).items() if not isinstance(v, dict | list)}
    out.update({re.sub(r"[^\w/]+", "_", k).strip("_"): v for k, v in row(run).items()})
    return out


def matches(run: dict, wanted: filters.Filter) -> bool:
    if run["display_status"] in STATUSES and run["display_status"] not in shown_statuses:
        return False
    haystack = " ".join([run["name"], run["run_id"], *run["dataset_stats"]])
    return filters.matches(wanted, haystack, fields(run))


def progress(run: dict) -> str:
    done, planned = run["epochs"], run["planned_epochs"]
    if planned and run["display_status"] in ("running", "stale", "crashed", "interrupted",
                                             "failed"):
        return f"epoch {done} of {planned}"
    return f"{done} of {planned}" if planned else str(done)


def row(run: dict) -> dict:
    config = run["config"] or {}
    return {
        "name": run["name"], "status": run["display_status"], "progress": progress(run),
        "started (UTC)": run["started"], "duration (min)": (
            run["duration"] / 60 if run["duration"] is not None else None),
        "epochs": run["epochs"], "last loss": run["last_loss"],
        "best loss": run["best_loss"], "max grad norm": run["max_grad_norm"],
        "NaN/Inf steps": run["nonfinite_steps"], "anomalies": run["anomalies"],
        "lr": config.get("lr"), "batch size": config.get("batch_size"),
        "world size": config.get("world_size"),
        "datasets": ", ".join(run["dataset_stats"]), "source": run["source"],
        "id": run["run_id"],
    }


def table(runs: list[dict]) -> pd.DataFrame:
    rows = [row(r) for r in runs]
    frame = pd.DataFrame({
        "name": [r["name"] for r in rows],
        "status": [[r["status"]] for r in rows],
        "progress": [r["progress"] for r in rows],
        "started (UTC)": pd.Series([r["started (UTC)"] for r in rows],
                                   dtype="datetime64[us]"),
        **{c: formats.measured([r[c] for r in rows])
           for c in ("duration (min)", "last loss", "best loss", "max grad norm", "lr")},
        **{c: formats.counted([r[c] for r in rows])
           for c in ("epochs", "NaN/Inf steps", "anomalies", "batch size")},
        "world size": formats.counted([r["world size"] for r in rows]),
        "datasets": [r["datasets"] for r in rows],
        "source": [r["source"] for r in rows],
        "id": [r["id"] for r in rows],
    })
    order = ["name", "status", "progress", "started (UTC)", "duration (min)", "epochs",
             "last loss", "best loss", "max grad norm", "NaN/Inf steps", "anomalies", "lr",
             "batch size", "world size", "datasets", "source", "id"]
    if all(r["world size"] is None for r in rows):
        order.remove("world size")
    return frame[order]


wanted = filters.parse(text, {k for r in all_runs for k in fields(r)})
if wanted.problems:
    st.warning("Left out of the filter (the table shows what the other terms keep): "
               + "; ".join(wanted.problems))
runs = [r for r in all_runs if matches(r, wanted)]
sort = table_sort.clicked(table_picks.clicked_column())
if sort is not None:
    runs = [runs[i] for i in table_sort.order([row(r).get(sort[0]) for r in runs], sort[1])]
ids = [r["run_id"] for r in runs]
table_picks.sync_table(ids, sidebar.picked())
frame = table(runs)
columns = {
    "status": st.column_config.MultiselectColumn(
        options=STATUSES, color=STATUS_COLORS, width="small",
        help="stale: no heartbeat for 2 minutes; crashed: its process is gone"),
    "progress": st.column_config.TextColumn(help="epochs recorded of the planned total"),
    "started (UTC)": st.column_config.DatetimeColumn(
        format="YYYY-MM-DD HH:mm:ss", help="not recorded: an imported run"),
    "duration (min)": formats.number_column(
        help="time its segments ran (a live one: until now)"),
    **{c: formats.number_column() for c in ("last loss", "best loss", "max grad norm",
                                            "lr")},
    "anomalies": st.column_config.NumberColumn(
        help="flags the anomaly rules raise on the epoch records (thresholds in "
             "the sidebar)"),
    "id": st.column_config.TextColumn(width="large", help="the full run id (copy a "
                                                           "cell with Ctrl+C)"),
}
columns = formats.with_widths(columns, formats.missing_widths(frame))
if sort is not None and sort[0] in frame.columns:
    columns[sort[0]] = {**columns.get(sort[0], st.column_config.Column()),
                        "label": table_sort.label(sort[0], sort)}
st.dataframe(
    # Header clicks select a column (the grid then leaves sorting to us: table_sort).
    frame, key=table_picks.KEY, on_select="rerun",
    selection_mode=["multi-row", "single-column"],
    hide_index=True, width="stretch", placeholder=formats.NOT_RECORDED,
    # The header and the rows; with none, the grid still draws one ("empty").
    height=ROW_PX * (min(max(len(runs), 1), MAX_ROWS_SHOWN) + 1) + 3,
    column_config=columns)
order = (f"sorted by {sort[0]}, {'descending' if sort[1] else 'ascending'}, NaN and not "
         "recorded last (click its header again to reverse it, a third time for newest "
         "first)" if sort is not None else
         "newest first (click a column header to sort by it)")
st.caption(f"{len(runs)} of {len(all_runs)} runs, {order}. Tick rows to compare them (or "
           "pick runs in the sidebar), then open Compare.")
live.watch(url, thresholds)
