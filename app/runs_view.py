"""The Runs page's view (filter, statuses, tags, sort, columns, page, rows per page) and
its link: read from the URL, written back to it after every run, and taken from the URL
again when the browser's Back or Forward brings an earlier one.

Parameters (each left out at its default): ``q`` (the filter text), ``status`` (the
statuses shown, comma-separated), ``tag`` (tags a run must all have), ``sort`` (a
column id, ``-id`` for descending), ``cols`` (the column ids shown, in order), ``page``
(from 1) and ``per`` (rows per page). Values that cannot be read are ignored: a
word that is no status or column is left out, and a ``status`` or ``cols`` with none
that is, ignored (the page knows the columns).

Streamlit pushes a browser history entry each time the page rewrites its URL, so Back
steps through the views. Which URL wins at the start of a run:

- a new session: the URL's view (a link);
- the page was drawn last and the URL is not the one it wrote: Back or Forward brought
  another view: the URL's;
- another page was drawn last: the URL's view if it names one (Back from a run's
  detail page), else the session's (a click on "Runs" at the top keeps the view).
"""

from __future__ import annotations

import streamlit as st

from runs_table import STATUSES

KEY = "runs_view"          # session state: the view
WRITTEN = "runs_link"      # session state: the parameters the page last put in the URL
PAGE_SIZES = (25, 50, 100, 200)
DEFAULT = {"q": "", "status": list(STATUSES), "tag": [], "sort": None, "cols": None,
           "page": 1, "per": 50}
# The widgets that show the view, by its field.
WIDGETS = {"q": "text_filter", "status": "status_filter", "tag": "tag_filter",
           "cols": "runs_columns", "per": "runs_per_page"}
# The pager (st.pagination) is moved to a page by a new key with that page as its
# default (setting a widget's value that has a default logs a warning with a stack).
PAGER = "runs_pager"       # session state: the pager's key number


def _words(text: str) -> list[str]:
    return [w for w in text.split(",") if w.strip()]


def from_params(params: dict[str, str]) -> dict:
    """The view a URL's parameters name (the rest at its defaults)."""
    view = {**DEFAULT, "status": list(DEFAULT["status"])}
    view["q"] = params.get("q", "")
    words = _words(params.get("status", ""))
    if "status" in params and (not words or any(s in words for s in STATUSES)):
        # (status= is no status ticked; status=zzz names none and is ignored)
        view["status"] = [s for s in STATUSES if s in words]
    view["tag"] = _words(params.get("tag", ""))
    sort = params.get("sort", "")
    if sort.strip("-"):
        view["sort"] = (sort.removeprefix("-"), sort.startswith("-"))
    if params.get("cols"):
        view["cols"] = _words(params["cols"])
    if params.get("page", "").isdigit() and int(params["page"]) >= 1:
        view["page"] = int(params["page"])
    if params.get("per", "").isdigit() and int(params["per"]) in PAGE_SIZES:
        view["per"] = int(params["per"])
    return view


def to_params(view: dict) -> dict[str, str]:
    """The URL parameters of ``view`` (none for a field at its default)."""
    params = {}
    if view["q"]:
        params["q"] = view["q"]
    if list(view["status"]) != list(STATUSES):
        params["status"] = ",".join(view["status"])
    if view["tag"]:
        params["tag"] = ",".join(view["tag"])
    if view["sort"]:
        params["sort"] = ("-" if view["sort"][1] else "") + view["sort"][0]
    if view["cols"] is not None:
        params["cols"] = ",".join(view["cols"])
    if view["page"] != 1:
        params["page"] = str(view["page"])
    if view["per"] != DEFAULT["per"]:
        params["per"] = str(view["per"])
    return params


def start() -> tuple[dict, bool]:
    """The view for this run of the page (see the module docstring for which URL wins)
    and whether it came from the URL; the view's widgets are set to it where the URL won
    or they lost their state (the columns' widget: by the page, which knows them)."""
    in_url = {k: v for k, v in st.query_params.items()
              if k in ("q", "status", "tag", "sort", "cols", "page", "per")}
    drawn_last = st.session_state.get("link_page") == "runs"
    adopt = (KEY not in st.session_state
             or (drawn_last and in_url != st.session_state.get(WRITTEN))
             or (not drawn_last and bool(in_url)))
    if adopt:
        st.session_state[KEY] = from_params(in_url)
    view = st.session_state[KEY]
    for name, key in WIDGETS.items():
        if name != "cols" and (adopt or key not in st.session_state):
            st.session_state[key] = view[name]
    if adopt:
        move_pager()
    return view, adopt


def pager_key() -> str:
    """The key of the pager as drawn now."""
    return f"runs_page_{st.session_state.get(PAGER, 0)}"


def move_pager() -> None:
    """Draw the pager afresh at the view's page (its default) from this run on."""
    st.session_state[PAGER] = st.session_state.get(PAGER, 0) + 1


def put(view: dict, **changes) -> dict:
    """``view`` changed; a page other than the first goes back to 1 when what it pages
    through changed."""
    paged = ("q", "status", "tag", "sort", "per")
    if any(changes.get(k, view[k]) != view[k] for k in paged) and "page" not in changes:
        changes["page"] = 1
        move_pager()
    view.update(changes)
    return view


def write(view: dict) -> None:
    """Note the view's parameters for the page's link (link.write_url puts them in)."""
    st.session_state[WRITTEN] = to_params(view)
