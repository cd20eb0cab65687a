"""The view a link reproduces: picked runs, x axis, smoothing, charts, thresholds, zoom.

A session starts from the URL's query parameters (``/compare?runs=3f2a,9bc1&x=step``);
from then on the widgets own the values, and after every run the URL is rewritten to
match them, so copying it from the address bar reproduces the page.

Parameters: ``runs`` (ids or unique prefixes, comma-separated), ``x`` (epoch, step,
wall, or a name the runs logged: p:tokens), ``smooth`` (0 to 0.99), ``charts`` and
``log`` (metric names), ``robust=0`` (plain y range), ``y=loss:0:5;lr::0.01`` (y ranges
set per chart, an end left empty where the values reach), ``range=LO,HI`` (x zoom),
``hide`` (runs hidden through the legend, like ``runs``), ``group`` (what the compare
charts group runs by: ``tags``, ``config`` or ``config.KEY``; app/groups.py) with
``members=1`` (draw the members too) and ``hideg`` (groups hidden through the legend,
their labels joined by ``|``), ``colors=tags`` (ungrouped runs coloured by their
tags), ``run`` (the Run detail page's run), the Runs page's view (``q``, ``status``,
``tag``, ``sort``, ``cols``, ``page``, ``per``: app/runs_view.py), the Hyperparameters
page's controls (``at``, ``axes``, ``sx``, ``sy``, ``slog``: views/params.py) and
any anomaly threshold by name (``grad_explode=5``) that differs from its default (one
below its least sensible value, link.threshold_minimum, is ignored).
Values that cannot be read are ignored, never guessed.
"""

from __future__ import annotations

import math
from urllib.parse import urlencode

import streamlit as st

from series import POINT, X_AXES

DEFAULT_CHARTS = ("loss", "grad_norm", "lr")
# The smallest value a whole-number threshold can take: a count of epochs or
# evaluations is at least 1 (a window of 0 epochs is none); the rest, 0.
INT_MINIMUM = {"spike_window": 1, "rising_epochs": 1, "restart_grace": 0,
               "overfit_evals": 1}


def threshold_minimum(name: str, default: float) -> float:
    """The smallest sensible value of threshold ``name``: every threshold is a norm, a
    score, a fraction, a rise or a count, none below 0 (a negative grad_explode would
    flag every epoch); the counts INT_MINIMUM says."""
    return INT_MINIMUM.get(name, 0) if isinstance(default, int) else 0.0


def _floats(text: str, count: int) -> list[float] | None:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        return None
    return values if len(values) == count and all(map(math.isfinite, values)) else None


def start(metrics: tuple[str, ...], threshold_defaults: dict) -> None:
    """Read the URL into the session once, when the session starts."""
    if "view" in st.session_state:
        return
    q = st.query_params
    view = {"runs": [w for w in q.get("runs", "").split(",") if w.strip()],
            "hide": [w for w in q.get("hide", "").split(",") if w.strip()],
            # Group labels hold commas ("lr = 0.002, seed = 1"): joined by "|".
            "hide_groups": [g for g in q.get("hideg", "").split("|") if g.strip()],
            "x": q.get("x") if q.get("x") in X_AXES or _logged(q.get("x", "")) else "epoch",
            "smooth": 0.0, "charts": list(DEFAULT_CHARTS), "log": ["grad_norm"],
            "robust": q.get("robust") != "0", "range": None, "run": q.get("run"),
            # Checked against the picked runs' config keys on the Compare page.
            "group": q.get("group", ""), "members": q.get("members") == "1",
            "tag_colors": q.get("colors") == "tags",
            "thresholds": {}}
    smooth = _floats(q.get("smooth", ""), 1)
    if smooth and 0 <= smooth[0] <= 0.99:
        view["smooth"] = round(smooth[0], 2)
    for key in ("charts", "log"):
        if key in q:
            # The recorded metrics, and names of runs' own (p:lr/1), checked once read.
            view[key] = [m for m in q.get(key, "").split(",") if m in metrics or _logged(m)]
    view["y"] = y_ranges(q.get("y", ""), metrics)
    span = _floats(q.get("range", ""), 2)
    if span and span[0] < span[1]:
        view["range"] = tuple(span)
    for name, default in threshold_defaults.items():
        value = _floats(q.get(name, ""), 1)
        if value is None or value[0] < threshold_minimum(name, default):
            continue
        if isinstance(default, int):
            if value[0] == int(value[0]):
                view["thresholds"][name] = int(value[0])
        else:
            view["thresholds"][name] = value[0]
    st.session_state["view"] = view


def _logged(name: str) -> bool:
    """Whether ``name`` may be a name of a run's own (p:lr/1), checked once read."""
    return name.startswith(POINT) and len(name) > len(POINT)


def y_ranges(text: str, metrics: tuple[str, ...]) -> dict[str, list]:
    """``y`` as written in a link, ``metric:low:high`` per chart joined by ``;`` (an end
    left empty: where the values reach), as {metric: [low, high]}; what cannot be read
    is left out."""
    out = {}
    for part in text.split(";"):
        metric, *ends = part.rsplit(":", 2)
        if len(ends) != 2 or not (metric in metrics or _logged(metric)):
            continue
        values = [None if not e else (_floats(e, 1) or [math.nan])[0] for e in ends]
        if any(v is not None and not math.isfinite(v) for v in values) or values == [None, None]:
            continue
        if None not in values and not values[0] < values[1]:
            continue
        out[metric] = values
    return out


def y_text(ranges: dict[str, list]) -> str:
    """y_ranges() written back for a link."""
    def end(value: float | None) -> str:
        return "" if value is None else repr(float(value))  # exactly as typed, read back

    return ";".join(f"{m}:{end(lo)}:{end(hi)}" for m, (lo, hi) in ranges.items())


def get(key: str):
    return st.session_state["view"][key]


def put(key: str, value) -> None:
    st.session_state["view"][key] = value


def short_ids(picked: list[str], all_ids: list[str]) -> list[str]:
    """Each picked id as its shortest unique prefix of at least 8 characters."""
    out = []
    for run_id in picked:
        for length in range(8, len(run_id) + 1):
            prefix = run_id[:length]
            if sum(1 for other in all_ids if other.startswith(prefix)) == 1:
                break
        out.append(prefix)
    return out


SWITCHING = "link_switching"   # session state: the page switched to another (switch_to)


def switch_to(page: str, script: str, params: dict[str, str]) -> None:
    """Open ``page`` (its ``script``) on its own link ``params``: the browser gets one
    history entry for it, so one Back comes back (the page would rewrite the URL, a
    second). The page left does not write its link after (write_url): that replaced the
    new page's link with its own (/run?tag=b, no run=, another run in a new tab)."""
    st.session_state["link_page"] = page
    st.session_state[SWITCHING] = True
    st.switch_page(script, query_params=params)


def write_url(page: str, picked: list[str], all_ids: list[str], thresholds: dict,
              threshold_defaults: dict) -> None:
    """Rewrite the query parameters to the view of ``page`` (compare, run, runs, sql);
    not on the run that switched to another page (switch_to)."""
    if st.session_state.pop(SWITCHING, False):
        return
    params = url_params(page, picked, all_ids, thresholds, threshold_defaults)
    if dict(st.query_params) != params:
        st.query_params.from_dict(params)
    st.session_state["link_page"] = page  # the page the URL was last written for


def url_params(page: str, picked: list[str], all_ids: list[str], thresholds: dict,
               threshold_defaults: dict) -> dict[str, str]:
    """The query parameters of the view of ``page`` (what write_url puts in the URL)."""
    params: dict[str, str] = {}
    if picked:
        params["runs"] = ",".join(short_ids(picked, all_ids))
    if page == "compare":
        view = st.session_state["view"]
        params["x"] = view["x"]
        if view["smooth"]:
            params["smooth"] = f"{view['smooth']:g}"
        if list(view["charts"]) != list(DEFAULT_CHARTS):
            params["charts"] = ",".join(view["charts"])
        if list(view["log"]) != ["grad_norm"]:
            params["log"] = ",".join(view["log"])
        if not view["robust"]:
            params["robust"] = "0"
        if view["y"]:
            params["y"] = y_text(view["y"])
        if view["range"]:
            params["range"] = ",".join(f"{v:.10g}" for v in view["range"])
        if view["group"]:
            params["group"] = view["group"]
            if view["members"]:
                params["members"] = "1"
            if view["hide_groups"]:
                params["hideg"] = "|".join(view["hide_groups"])
        elif view["tag_colors"]:
            params["colors"] = "tags"
        hidden = [i for i in all_ids if any(i.startswith(w) for w in view["hide"])]
        if hidden:
            params["hide"] = ",".join(short_ids(hidden, all_ids))
    if page == "run" and get("run"):
        params["run"] = short_ids([get("run")], all_ids)[0]
    if page == "runs":  # the Runs page's view (app/runs_view.py)
        params.update(st.session_state.get("runs_link", {}))
    if page == "params":  # the Hyperparameters page's controls (views/params.py)
        params.update(st.session_state.get("params_link", {}))
    for name, value in thresholds.items():
        if value != threshold_defaults[name]:
            params[name] = f"{value:g}"
    return params


def compare_link(run_short: str, x_axis: str, x_range: tuple[float, float],
                 charts: list[str]) -> str:
    """A link (relative to the app) that opens the Compare page on one run, on
    ``x_axis``, zoomed to ``x_range``, drawing ``charts``: what start() reads."""
    params = {"runs": run_short, "x": x_axis,
              "range": ",".join(f"{v:.10g}" for v in x_range)}
    if list(charts) != list(DEFAULT_CHARTS):
        params["charts"] = ",".join(charts)
    return "compare?" + urlencode(params, safe=",:/")
