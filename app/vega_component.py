"""Vega-Lite charts drawn in the page by our own Streamlit component (chart_component.js).

Why not ``st.vega_lite_chart``: Streamlit draws its charts with Vega's expression
interpreter (and takes no option to change that) and turns every dataset into row
objects itself. Measured in headless Chromium on a 2-core machine, Vega alone draws the
compare page's three charts of 20 runs in 0.68 s on a fresh page with its compiled
expressions, 1.0 s interpreted (0.22 against 0.62 s once warm); in the page, drawing
went from 1.7 to 1.0 s (bench/explorer_browser.py --split).
The component draws the same spec with vega-embed, compiled, from the Vega scripts in
app/vega/ (nothing loads from the internet), its datasets sent as Arrow tables.

Two Streamlit APIs do the work: a Components v2 component draws in the page itself (no
iframe), and a v1 component, never shown, serves the app/vega/ folder's files to the
browser (``/component/<name>/vega.min.js``). v2 serves files only from the folder of a
component that an installed package declares in a pyproject.toml inside the package,
and the explorer also runs from a checkout's app/ folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.components.v1 import declare_component

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "vega"
SCRIPT = (HERE / "chart_component.js").read_text(encoding="utf-8")
# Drawn by the component's JS; registered once per process, found again by AppTest's
# own runtimes (Streamlit re-registers a v2 component on the active runtime).
_CHART = st.components.v2.component("hlbd_chart", js=SCRIPT, isolate_styles=False)


def assets_url() -> str:
    """The URL folder the browser fetches the Vega scripts from (this server's)."""
    files = declare_component("vega_files", path=str(ASSETS))
    if files.url:  # server.customComponentBaseUrlPath: served from elsewhere
        return files.url.rstrip("/") + "/"
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base + '/' if base else ''}component/{files.name}/"


def payload(spec: dict, axis_room: int) -> dict:
    """What the component draws: the spec without its datasets, each dataset an Arrow
    table under its own name (its "run" column as the index into the spec's
    ``usermeta.runs``, so a label is not sent once per point), and the layout facts.
    The chart is zoomable when the spec has a "zoom" selection.

    Hashes say what changed since the last drawing: ``layout`` (everything but the data),
    ``hashes`` (each dataset's) and ``fingerprint`` (all of it). The browser draws again
    only when the fingerprint changes (Streamlit hands the component its data anew on
    every rerun, changed or not), and with the same layout it only swaps the datasets
    that changed in the drawn chart (a smoothing, a zoom that keeps the axes), without
    building the chart again.
    """
    labels = spec["usermeta"]["runs"]
    data = {"spec": {k: v for k, v in spec.items() if k != "datasets"},
            "datasets": list(spec.get("datasets", {})), "axis_room": axis_room,
            "zoomable": any(p["name"] == "zoom" for p in spec.get("params", []))}
    layout = json.dumps(data, sort_keys=True, default=str).encode()
    data["layout"] = hashlib.blake2b(layout, digest_size=16).hexdigest()
    digest = hashlib.blake2b(layout, digest_size=16)
    data["hashes"] = {}
    for name, frame in spec.get("datasets", {}).items():
        if "run" in frame:
            codes = pd.Categorical(frame["run"], categories=labels).codes
            frame = frame.assign(run=codes.astype("int16"))
        data[name] = frame.reset_index(drop=True)
        one = hashlib.blake2b(name.encode(), digest_size=16)
        one.update(",".join(f"{c}:{t}" for c, t in data[name].dtypes.items()).encode())
        one.update(pd.util.hash_pandas_object(data[name], index=False).to_numpy())
        data["hashes"][name] = one.hexdigest()
        digest.update(data["hashes"][name].encode())
    data["fingerprint"] = digest.hexdigest()
    return data


def preload() -> None:
    """Start fetching the Vega scripts now, while the page's charts are still built (an
    element that shows nothing, at the sidebar's foot)."""
    with st.sidebar:
        _CHART(data={"assets": assets_url()}, key="vega_preload")


def draw(data: dict, key: str | None = None, hidden: list[str] = ()) -> None:
    """Draw a payload(), the runs labelled ``hidden`` hidden when the chart first shows
    (from then on the browser keeps what the legend says, through every redraw). A
    zoomable chart's user events come in the rerun they cause, as ``zoom_event(key)``
    and ``hidden_runs(key)``."""
    kwargs = ({"on_zoom_change": lambda: None, "on_hidden_change": lambda: None}
              if data.get("zoomable") else {})
    # The browser takes "hidden" when the chart first shows and keeps its legend's from
    # then on, so once it has said what it hides, what it was first given is sent
    # again: the element stays the same bytes through a legend click's rerun, and
    # Streamlit sends a reference to the copy the browser holds (its ForwardMsg
    # cache), not the data again.
    first = f"_hlbd_first_hidden_{key}"
    if key is None or hidden_runs(key) is None:
        st.session_state[first] = list(hidden)
    _CHART(data={**data, "assets": assets_url(),
                 "hidden": st.session_state.get(first, list(hidden))}, key=key, **kwargs)


def zoom_event(key: str) -> dict | None:
    """What the user just did on the chart drawn under ``key``, in the rerun it caused:
    ``{"x": [lo, hi]}`` for a range dragged across it, ``{}`` for a double-click (back to
    everything); None when neither."""
    state = st.session_state.get(key)
    event = state.get("zoom") if isinstance(state, dict) else None
    return dict(event) if isinstance(event, dict) else None


def hidden_runs(key: str) -> list[str] | None:
    """The labels of the runs hidden through the legend of the chart drawn under
    ``key``, as the browser last said; None before it said anything."""
    state = st.session_state.get(key)
    hidden = state.get("hidden") if isinstance(state, dict) else None
    return [str(label) for label in hidden] if isinstance(hidden, list) else None
