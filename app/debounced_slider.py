"""A slider whose value reaches the app once the hand stops (debounced_slider.js).

Streamlit's st.slider sends every step of a held arrow key, each a rerun; this one shows
each step at once and sends the last, so holding a key costs one rerun.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

_SLIDER = st.components.v2.component(
    "hlbd_slider", js=(Path(__file__).resolve().parent / "debounced_slider.js").read_text(
        encoding="utf-8"), isolate_styles=False)


def slider(label: str, low: float, high: float, value: float, step: float, *, key: str,
           help: str | None = None, width: int | str = "stretch") -> float:
    """The slider's value: as the user last set it, else ``value``."""
    _SLIDER(data={"label": label, "help": help, "min": low, "max": high, "step": step,
                  "value": current(key, value)},
            key=key, default={"value": value}, width=width, on_value_change=lambda: None)
    return current(key, value)


def current(key: str, value: float) -> float:
    """The value the slider under ``key`` last sent, else ``value``."""
    state = st.session_state.get(key)
    sent = state.get("value") if isinstance(state, dict) else None
    return value if not isinstance(sent, int | float) or isinstance(sent, bool) else float(sent)
