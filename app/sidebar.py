"""The sidebar every page shares: which database, which runs to compare, thresholds.

main.py draws the widgets; pages read their values through the accessors here.
"""

from __future__ import annotations

import streamlit as st

import link
import reads
from hlbd.anomalies import THRESHOLD_HELP
from hlbd.store import connect

PICKER_RUNS = 200   # the newest runs the sidebar offers (with those picked)


def database_url() -> str:
    """The database the explorer reads: the sidebar field, else HLBD_DB, else ./hlbd.db."""
    return connect.resolve_db_url((st.session_state.get("db") or "").strip() or None)


def choose_database() -> str:
    default = connect.resolve_db_url(None)
    shown = str(connect.sqlite_path(default) or default)
    st.sidebar.text_input(
        "Run database", value=shown, key="db",
        help="A SQLite file or a SQLAlchemy URL; opened read-only. Default: HLBD_DB, "
             "else ./hlbd.db (the same setting as the hlbd commands).")
    return database_url()


def page_runs(*, stop_when_none: bool = True) -> tuple[str, tuple, dict[str, dict]]:
    """What a page starts from: the database URL, the anomaly thresholds, and the runs
    by id (newest first); with no runs, says how to make one and stops the page
    (unless ``stop_when_none`` is False: the page says it its own way)."""
    url = database_url()
    chosen = thresholds()
    runs = {r["run_id"]: r for r in reads.runs(url, chosen)}
    if not runs and stop_when_none:
        st.info(f"No runs in `{url}` yet. {reads.FIRST_RUN_HELP}")
        st.stop()
    return url, chosen, runs


def label(run: dict) -> str:
    """How a run is named in pickers and chart legends: name and short id."""
    return f"{run['name']} · {run['run_id'][:8]}"


def pick_runs(runs: list[dict]) -> list[str]:
    """The sidebar multiselect of runs to compare (also set from the runs table)."""
    labels = {r["run_id"]: label(r) for r in runs}
    if "picked" not in st.session_state:
        # A link can name runs: ?runs=3f2a,9bc1 (ids or unique id prefixes), in its order.
        wanted = link.get("runs")
        st.session_state["picked"] = [next(i for i in labels if i.startswith(w))
                                      for w in wanted
                                      if sum(i.startswith(w) for i in labels) == 1]
    # Runs of another database (the field changed) are no longer options.
    st.session_state["picked"] = list(dict.fromkeys(
        i for i in st.session_state["picked"] if i in labels))
    # The picked runs and the newest PICKER_RUNS: the options go to the browser on
    # every run of the page, and the Runs table pages through any number of runs.
    offered = list(dict.fromkeys([*st.session_state["picked"],
                                  *(r["run_id"] for r in runs[:PICKER_RUNS])]))
    return st.sidebar.multiselect(
        "Runs to compare", offered, key="picked", format_func=labels.get,
        placeholder="pick runs (or tick rows in Runs)",
        help=None if len(runs) <= PICKER_RUNS else
        f"The newest {PICKER_RUNS} runs and those picked; tick rows in Runs (filter, "
        "sort, page) to pick any other.")


def picked() -> list[str]:
    return list(st.session_state.get("picked", []))


def choose_thresholds() -> None:
    with st.sidebar.expander("Anomaly thresholds"):
        st.caption("Each rule's threshold; hover the ? for what it means. Changed values "
                   "go into the page's link.")
        wanted = link.get("thresholds")
        for name, default in reads.threshold_defaults().items():
            st.number_input(name.replace("_", " "), value=wanted.get(name, default),
                            key=f"threshold_{name}", help=THRESHOLD_HELP.get(name),
                            step=1 if isinstance(default, int) else None,
                            min_value=link.threshold_minimum(name, default),
                            format=None if isinstance(default, int) else "%g")


def thresholds() -> tuple:
    """The thresholds set in the sidebar, as (name, value) pairs (hashable for caches)."""
    wanted = link.get("thresholds") if "view" in st.session_state else {}
    return tuple((name, st.session_state.get(f"threshold_{name}", wanted.get(name, default)))
                 for name, default in reads.threshold_defaults().items())
