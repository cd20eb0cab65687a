"""Live pages: rerun the app when a run it shows has news (a new epoch, a status).

A small fragment polls the run list (cached for reads.LIVE_TTL); when the versions of the
runs a page watches differ from those it was drawn with, the whole app reruns, so the
sidebar, tables and charts all show the news. Nothing is redrawn while nothing changed.
"""

from __future__ import annotations

import os

import streamlit as st

import reads

LIVE_SECONDS = 5     # while a watched run is running


def _idle_seconds() -> float:
    """How often the runs page looks for runs started elsewhere (HLBD_UI_REFRESH_SECONDS,
    default 30; a value that is not a positive number is ignored)."""
    try:
        value = float(os.environ.get("HLBD_UI_REFRESH_SECONDS") or 30)
    except ValueError:
        return 30.0
    return min(value, 3600.0) if value > 0 else 30.0


IDLE_SECONDS = _idle_seconds()


def _versions(url: str, thresholds: tuple, run_ids: list[str] | None) -> tuple:
    if run_ids is None:  # every run: the list's generation changes with any version
        reads.runs(url, thresholds)  # (asks the store what changed, at most every 2 s)
        return (reads.run_list(url).generation,)
    return tuple((r["run_id"], r["version"]) for r in reads.runs(url, thresholds)
                 if r["run_id"] in run_ids)


def watch(url: str, thresholds: tuple, run_ids: list[str] | None = None) -> None:
    """Rerun when the watched runs (all runs when None, new runs included) change."""
    runs = [r for r in reads.runs(url, thresholds)
            if run_ids is None or r["run_id"] in run_ids]
    live = any(r["display_status"] == "running" for r in runs)
    if not live and run_ids is not None:
        return
    drawn = _versions(url, thresholds, run_ids)

    @st.fragment(run_every=LIVE_SECONDS if live else IDLE_SECONDS)
    def poll() -> None:
        if _versions(url, thresholds, run_ids) != drawn:
            st.rerun(scope="app")

    poll()
