"""What the explorer reads: plain functions over hlbd's read-only store, cached.

The engine of each database is a cached resource opened read-only
(``hlbd.store.connect.read_engine``), so the explorer never holds a write lock and a
trainer writing at the same time never sees ``database is locked``. The run list is
cached for ``LIVE_TTL`` seconds; everything about one run is keyed by its ``version``
(status, heartbeat, epoch count), which changes whenever the trainer writes, so a
finished run is read once and a running one is re-read only when it has news. The run
list itself is app/run_list.py's, read again only when the store changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from hlbd.anomalies import STEP_RULES, Thresholds, detect
from hlbd.errors import HlbdError, NoDatabaseError
from hlbd.store import Store, buckets, connect, schema
from hlbd.store.query import QueryResult, run_query
from run_list import LIVE_TTL, RunList, report_time  # noqa: F401 (report_time: the pages)

RUN_TTL = 600.0       # per-run data is keyed by version; the TTL only bounds memory
SQL_MAX_ROWS = 10_000

FIRST_RUN_HELP = ("Start a first run with `hlbd train` (it trains on the bundled dataset "
                  "and writes here when it uses the same database setting: `--db`, "
                  "else `HLBD_DB`, else `./hlbd.db`). This page shows it as soon as the "
                  "first epoch is recorded.")


@st.cache_resource(show_spinner=False)
def store(url: str) -> Store:
    """A store whose engine cannot write (one per database URL, shared by sessions)."""
    return Store(url, connect.read_engine(url))


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def database_problem(url: str) -> str | None:
    """Why ``url`` cannot be explored (a message saying what to do), or None."""
    path = connect.sqlite_path(url)
    if path is not None and not path.is_file():
        return f"There is no run database at `{path}` yet. {FIRST_RUN_HELP}"
    try:
        schema.check_schema(store(url).engine, url)
    except NoDatabaseError:
        return f"`{url}` holds no runs yet. {FIRST_RUN_HELP}"
    except (HlbdError, SQLAlchemyError) as exc:
        return f"`{url}` cannot be read as a run database: {error_message(exc)}"
    return None


@st.cache_resource(show_spinner=False)
def run_list(url: str) -> RunList:
    """The run list of ``url`` (app/run_list.py), one per database, shared by sessions."""
    return RunList(store(url))


def runs(url: str, thresholds: tuple = ()) -> list[dict]:
    """All runs, newest first, with what the runs table shows about each (see
    run_list.summaries; ``anomalies``: flags under ``thresholds``). Shared by every
    session: read the rows, never change them."""
    return run_list(url).rows(thresholds)


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def run(url: str, run_id: str, version: tuple) -> dict:
    return store(url).get_run(run_id)


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def epochs(url: str, run_id: str, version: tuple, include_superseded: bool = False
           ) -> list[dict]:
    return store(url).epochs(run_id, include_superseded=include_superseded)


@st.cache_data(ttl=RUN_TTL, max_entries=1000, show_spinner=False)
def step_span(url: str, run_id: str, version: tuple) -> dict | None:
    """The run's effective steps: first_step, last_step, steps; None without steps."""
    return buckets.step_spans(store(url).engine, [run_id]).get(run_id)


@st.cache_data(ttl=RUN_TTL, max_entries=1000, show_spinner=False)
def step_buckets(url: str, run_id: str, version: tuple, width: int,
                 steps: tuple[int, int] | None = None) -> pd.DataFrame:
    """One run's effective steps in buckets of ``width`` (hlbd.store.buckets.step_buckets),
    as a frame; ``steps``: only the buckets that overlap this step range."""
    rows = buckets.step_buckets(store(url).engine, [run_id], width=width, steps=steps)
    return pd.DataFrame.from_records(rows, columns=buckets.BUCKET_FIELDS)


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def epoch_steps(url: str, run_id: str, version: tuple) -> list[dict]:
    return buckets.epoch_steps(store(url).engine, run_id)


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def point_keys(url: str, run_id: str, version: tuple) -> list[str]:
    """The names ``run_id`` logged of its own (hlbd.Run, the integrations)."""
    return sorted({p["key"] for p in store(url).point_series(run_id)})


@st.cache_data(ttl=RUN_TTL, max_entries=1000, show_spinner=False)
def points(url: str, run_id: str, version: tuple, key: str) -> list[dict]:
    """One of its names' values on the effective history: scope, step, epoch, value."""
    return [{k: p[k] for k in ("scope", "step", "epoch", "value")}
            for p in store(url).points(run_id, key)]


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def segments(url: str, run_id: str, version: tuple) -> list[dict]:
    return store(url).segments(run_id)


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def checkpoints(url: str, run_id: str, version: tuple) -> list[dict]:
    return store(url).checkpoints(run_id)


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def flags(url: str, run_id: str, version: tuple, thresholds: tuple = (),
          with_steps: bool = True) -> list[dict]:
    """The anomaly rules (hlbd.anomalies) applied to the run's effective history.

    ``thresholds``: (name, value) pairs overriding Thresholds' defaults. With
    ``with_steps`` a flag that names a step (the first NaN/Inf grad norm, the largest
    one) gets it: the steps of just the flagged epochs are read for that.
    """
    record = run(url, run_id, version)
    rows = epochs(url, run_id, version)
    limits = Thresholds(**dict(thresholds))
    val_losses = store(url).epoch_values(run_id, "val_loss")
    found = detect(record, rows, (), limits, val_losses=val_losses)
    wanted = sorted({f["epoch"] for f in found if f["rule"] in STEP_RULES})
    if not with_steps or not wanted:
        return found
    return detect(record, rows, store(url).steps(run_id, epochs=wanted), limits,
                  val_losses=val_losses)


def sql(url: str, query: str) -> QueryResult:
    """User SQL, read-only and under hlbd.store.query's time limit (never cached)."""
    return run_query(store(url).engine, query, max_rows=SQL_MAX_ROWS)


def threshold_defaults() -> dict:
    return dataclasses.asdict(Thresholds())


def error_message(exc: BaseException) -> str:
    """One line for a human: hlbd's own message, or the database driver's first line."""
    if isinstance(exc, SQLAlchemyError) and getattr(exc, "orig", None) is not None:
        return str(exc.orig).strip().splitlines()[0]
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextlib.contextmanager
def errors_shown() -> Iterator[None]:
    """Show a failed read as an error line on the page instead of a traceback."""
    try:
        yield
    except (HlbdError, SQLAlchemyError) as exc:
        st.error(f"Could not read the run database: {error_message(exc)}")


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def evaluations(url: str, run_id: str, version: tuple) -> list[dict]:
    """``hlbd eval``'s evaluations of the run (Store.evaluations), oldest first.

    Keyed by the run's version like the rest: an evaluation of a finished run is new
    to a cached read, so the TTL of LIVE_TTL bounds how long it can go unseen."""
    return store(url).evaluations(run_id)
