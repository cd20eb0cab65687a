"""The sidebar every page shares: which database, which runs to compare, thresholds.

main.py draws the widgets; pages read their values through the accessors here.
"""

from __future__ import annotations

import streamlit as st

import reads
from hlbd import database


def database_url() -> str:
    """The database the explorer reads: the sidebar field, else HLBD_DB, else ./hlbd.db."""
    return database.resolve_db_url((st.session_state.get("db") or "").strip() or None)


def choose_database() -> str:
    default = database.resolve_db_url(None)
    shown = str(database.sqlite_path(default) or default)
    st.sidebar.text_input(
        "Run database", value=shown, key="db",
        help="A SQLite file or a SQLAlchemy URL; opened read-only. Default: HLBD_DB, "
             "else ./hlbd.db (the same setting as the hlbd commands).")
    return database_url()


def label(run: dict) -> str:
    """How a run is named in pickers and chart legends: name and short id."""
    return f"{run['name']} · {run['run_id'][:8]}"


def pick_runs(runs: list[dict]) -> list[str]:
    """The sidebar multiselect of runs to compare (also set from the runs table)."""
    labels = {r["run_id"]: label(r) for r in runs}
    if "picked" not in st.session_state:
        # A link can name runs: ?runs=3f2a,9bc1 (ids or id prefixes).
        wanted = [w for w in st.query_params.get("runs", "").split(",") if w]
        st.session_state["picked"] = [i for i in labels if any(i.startswith(w)
                                                               for w in wanted)]
    # Runs of another database (the field changed) are no longer options.
    st.session_state["picked"] = [i for i in st.session_state["picked"] if i in labels]
    return st.sidebar.multiselect("Runs to compare", list(labels), key="picked",
                                  format_func=labels.get,
                                  placeholder="pick runs (or select rows in Runs)")


def picked() -> list[str]:
    return list(st.session_state.get("picked", []))


def choose_thresholds() -> None:
    with st.sidebar.expander("Anomaly thresholds"):
        for name, default in reads.threshold_defaults().items():
            st.number_input(name.replace("_", " "), value=default, key=f"threshold_{name}",
                            step=1 if isinstance(default, int) else None,
                            format=None if isinstance(default, int) else "%g")


def thresholds() -> tuple:
    """The thresholds set in the sidebar, as (name, value) pairs (hashable for caches)."""
    return tuple((name, st.session_state.get(f"threshold_{name}", default))
                 for name, default in reads.threshold_defaults().items())
