"""Hyperparameters: the picked runs' exact match per module / level side by side, and
every run's numeric config against its summaries, in parallel coordinates and a
scatter, where a brush picks runs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import formats
import hyperparams
import reads
import sidebar
from hyperparams import EXACT

st.title("Hyperparameters")
url = sidebar.database_url()
thresholds = sidebar.thresholds()
runs = {r["run_id"]: r for r in reads.runs(url, thresholds)}
if not runs:
    st.info(f"No runs in `{url}` yet. {reads.FIRST_RUN_HELP}")
    st.stop()


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
            "At", ["best", "last"], default="best", key="exact_at",
            format_func={"best": "best epoch (lowest val loss)",
                         "last": "last evaluated epoch"}.get) or "best"
        table = exact_table(chosen, at)
        if len(table) == 1:
            st.caption("None of the picked runs recorded held-out exact match "
                       f"(`{EXACT}`: `hlbd train` with a held-out split records it).")
        formats.show(table, width="stretch")
        st.caption("Greedy-decoded exact match on each run's held-out pairs, overall and "
                   "per module (Hardcore files) or level (Full files). A run without "
                   "val_loss has no best epoch: not recorded.")
