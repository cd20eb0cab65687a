"""Ticks in the runs table and the sidebar's picked runs are one choice, by run id.

The table's selection is a list of row positions; rows move (a new run arrives on top, a
filter hides some), so positions are turned into run ids with the id list of the table
the user ticked in, and back into positions for the table as drawn now. A run picked in
the sidebar or by a link shows ticked; a run filtered out of the table stays picked.

A header or cell click is a selection the page acts on once, then clears. The browser
applies a selection the server sets only when it differs from the one the server set
before, so a second clear in a row (a header clicked twice) would be dropped and the
browser would send the old click again with the next change of any widget (a tag
picked would sort once more). So a click acted on renews the table's key instead: a new
widget, with nothing selected but the ticks.
"""

from __future__ import annotations

import streamlit as st

KEY = "runs_table"          # the table's key (after a click acted on: KEY_1, ...)
ROUND = "runs_table_round"  # session state: how many times the key was renewed


def key() -> str:
    """The table's key as drawn now."""
    round_ = st.session_state.get(ROUND, 0)
    return f"{KEY}_{round_}" if round_ else KEY


def _renew() -> None:
    st.session_state[ROUND] = st.session_state.get(ROUND, 0) + 1


def _rows(state) -> list[int]:
    try:
        return sorted(int(i) for i in state["selection"]["rows"])
    except (KeyError, TypeError):
        return []


def apply_ticks() -> None:
    """Turn the user's latest ticks into the picked runs (call before the sidebar)."""
    shown = st.session_state.get("runs_table_ids")
    synced = st.session_state.get("runs_table_synced")
    state = st.session_state.get(key())
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
        columns = list(st.session_state[key()]["selection"]["columns"])
    except (KeyError, TypeError):
        return None
    return columns[0] if columns else None


def clicked_cell() -> tuple[int, str] | None:
    """The cell the user just clicked (row position, column name), or None."""
    try:
        cells = list(st.session_state[key()]["selection"]["cells"])
    except (KeyError, TypeError):
        return None
    if not cells:
        return None
    row, column = cells[0]
    return int(row), str(column)


def forget_cell() -> None:
    """Clear the clicked cell (it was acted on), keeping the ticks."""
    state = st.session_state.get(key())
    if state is not None:
        _renew()
        st.session_state[key()] = {"selection": {"rows": _rows(state), "columns": [],
                                                 "cells": []}}


def sync_table(ids: list[str], picked: list[str]) -> None:
    """Tick exactly the picked runs among ``ids`` (the table's rows, in order), no
    column selected."""
    rows = sorted(ids.index(i) for i in picked if i in ids)
    state = st.session_state.get(key())
    clicked = clicked_column() is not None
    if clicked:
        _renew()   # (see the module docstring)
    if clicked or _rows(state) != rows:
        st.session_state[key()] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    st.session_state["runs_table_ids"] = ids
    st.session_state["runs_table_synced"] = rows
