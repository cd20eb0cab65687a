"""Ticks in the runs table and the sidebar's picked runs are one choice, by run id.

The table's selection is a list of row positions; rows move (a new run arrives on top, a
filter hides some), so positions are turned into run ids with the id list of the table
the user ticked in, and back into positions for the table as drawn now. A run picked in
the sidebar or by a link shows ticked; a run filtered out of the table stays picked.
"""

from __future__ import annotations

import streamlit as st

KEY = "runs_table"


def _rows(state) -> list[int]:
    try:
        return sorted(int(i) for i in state["selection"]["rows"])
    except (KeyError, TypeError):
        return []


def apply_ticks() -> None:
    """Turn the user's latest ticks into the picked runs (call before the sidebar)."""
    shown = st.session_state.get("runs_table_ids")
    synced = st.session_state.get("runs_table_synced")
    state = st.session_state.get(KEY)
    if shown is None or synced is None or state is None:
        return
    rows = [i for i in _rows(state) if i < len(shown)]
    if rows == synced:
        return
    ticked = [shown[i] for i in rows]
    picked = [i for i in st.session_state.get("picked", []) if i not in shown or i in ticked]
    picked += [i for i in ticked if i not in picked]
    st.session_state["picked"] = picked
    st.session_state["runs_table_synced"] = rows


def clicked_column() -> str | None:
    """The column whose header the user just clicked (the table selects columns, one at a
    time, instead of sorting them itself), or None; sync_table clears it."""
    try:
        columns = list(st.session_state[KEY]["selection"]["columns"])
    except (KeyError, TypeError):
        return None
    return columns[0] if columns else None


def clicked_cell() -> tuple[int, str] | None:
    """The cell the user just clicked (row position, column name), or None."""
    try:
        cells = list(st.session_state[KEY]["selection"]["cells"])
    except (KeyError, TypeError):
        return None
    if not cells:
        return None
    row, column = cells[0]
    return int(row), str(column)


def forget_cell() -> None:
    """Clear the clicked cell (it was acted on), keeping the ticks."""
    state = st.session_state.get(KEY)
    if state is not None:
        st.session_state[KEY] = {"selection": {"rows": _rows(state), "columns": [],
                                               "cells": []}}


def sync_table(ids: list[str], picked: list[str]) -> None:
    """Tick exactly the picked runs among ``ids`` (the table's rows, in order), no
    column selected."""
    rows = sorted(ids.index(i) for i in picked if i in ids)
    state = st.session_state.get(KEY)
    if _rows(state) != rows or clicked_column() is not None:
        st.session_state[KEY] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    st.session_state["runs_table_ids"] = ids
    st.session_state["runs_table_synced"] = rows
