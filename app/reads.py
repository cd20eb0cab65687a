"""What the explorer reads: plain functions over hlbd's read-only store, cached.

The engine of each database is a cached resource opened read-only
(``hlbd.database.read_engine``), so the explorer never holds a write lock and a
trainer writing at the same time never sees ``database is locked``. The run list is
cached for ``LIVE_TTL`` seconds; everything about one run is keyed by its ``version``
(status, heartbeat, epoch count), which changes whenever the trainer writes, so a
finished run is read once and a running one is re-read only when it has news.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from hlbd import compare, database
from hlbd.anomalies import Thresholds, detect
from hlbd.errors import HlbdError
from hlbd.query import QueryResult, run_query
from hlbd.store import Store

LIVE_TTL = 2.0        # seconds a run list may be old
RUN_TTL = 600.0       # per-run data is keyed by version; the TTL only bounds memory
SQL_MAX_ROWS = 10_000

FIRST_RUN_HELP = ("Start a first run with `hlbd train` (it trains on the bundled dataset "
                  "and writes here when it uses the same database setting: `--db`, "
                  "else `HLBD_DB`, else `./hlbd.db`). This page shows it as soon as the "
                  "first epoch is recorded.")


@st.cache_resource(show_spinner=False)
def store(url: str) -> Store:
    """A store whose engine cannot write (one per database URL, shared by sessions)."""
    return Store(url, database.read_engine(url))


@st.cache_resource(show_spinner=False)
def schema_head() -> str:
    return database.head_revision()


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def database_problem(url: str) -> str | None:
    """Why ``url`` cannot be explored (a message saying what to do), or None."""
    path = database.sqlite_path(url)
    if path is not None and not path.is_file():
        return f"There is no run database at `{path}` yet. {FIRST_RUN_HELP}"
    try:
        revision = database.current_revision(store(url).engine)
    except (HlbdError, SQLAlchemyError) as exc:
        return f"`{url}` cannot be read as a run database: {error_message(exc)}"
    if revision is None:
        return f"`{url}` holds no runs yet. {FIRST_RUN_HELP}"
    if revision != schema_head():
        return (f"`{url}` is at schema revision {revision!r}; this explorer reads "
                f"{schema_head()!r}. Run `hlbd db upgrade --db {url}` (or, if the database "
                "is newer, upgrade hlbd).")
    return None


def version(run: dict) -> tuple:
    """What changes whenever the trainer writes something about ``run``."""
    return (run["display_status"], str(run.get("heartbeat_at")), run.get("epochs"))


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def runs(url: str, thresholds: tuple = ()) -> list[dict]:
    """All runs, newest first, with grad-norm extremes and their number of anomaly flags."""
    rows = store(url).list_runs()
    extremes = compare.grad_norm_extremes(store(url).engine)
    for run in rows:
        run["version"] = version(run)
        run.update(extremes.get(run["run_id"], {"max_grad_norm": None,
                                                 "nonfinite_steps": None}))
        # From the epoch rows, where a measured NaN is NaN (and not a missing value).
        losses = [e["loss"] for e in epochs(url, run["run_id"], run["version"])]
        finite = [v for v in losses if v is not None and math.isfinite(v)]
        run["last_loss"] = losses[-1] if losses else None
        run["best_loss"] = min(finite) if finite else (math.nan if losses else None)
        run["anomalies"] = len(flags(url, run["run_id"], run["version"], thresholds))
    return rows


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def run(url: str, run_id: str, version: tuple) -> dict:
    return store(url).get_run(run_id)


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def epochs(url: str, run_id: str, version: tuple, include_superseded: bool = False
           ) -> list[dict]:
    return store(url).epochs(run_id, include_superseded=include_superseded)


@st.cache_data(ttl=RUN_TTL, max_entries=200, show_spinner=False)
def step_buckets(url: str, run_versions: tuple[tuple[str, tuple], ...],
                 max_points: int = compare.DEFAULT_MAX_POINTS) -> list[dict]:
    """Downsampled steps of several runs (``run_versions``: (run_id, version) pairs)."""
    return compare.step_buckets(store(url).engine, [run_id for run_id, _ in run_versions],
                                max_points)


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def segments(url: str, run_id: str, version: tuple) -> list[dict]:
    return store(url).segments(run_id)


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def checkpoints(url: str, run_id: str, version: tuple) -> list[dict]:
    return store(url).checkpoints(run_id)


@st.cache_data(ttl=RUN_TTL, max_entries=500, show_spinner=False)
def flags(url: str, run_id: str, version: tuple, thresholds: tuple = (),
          with_steps: bool = False) -> list[dict]:
    """The anomaly rules (hlbd.anomalies) applied to the run's effective history.

    ``thresholds``: (name, value) pairs overriding Thresholds' defaults. Without
    ``with_steps`` the rules see the epoch records only (their flags then name no step).
    """
    record = run(url, run_id, version)
    steps = store(url).steps(run_id) if with_steps else []
    return detect(record, epochs(url, run_id, version), steps, Thresholds(**dict(thresholds)))


def sql(url: str, query: str) -> QueryResult:
    """User SQL, read-only and under hlbd.query's time limit (never cached)."""
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
