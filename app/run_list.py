"""Every run's summary row, for the runs table, the sidebar and the pages' run pickers:
read in bulk, rebuilt only when the store changed, shared by every session.

A page load used to read each run's record, epochs and validation losses one run at a
time through per-run caches of 500 entries: with 5,000 runs every load missed them all
and read the store 15,000 times (15 to 60 s a load). Now the store's change marks
(``Store.change_marks``, a few aggregates) are asked at most every ``LIVE_TTL`` seconds;
while they are equal the same rows are handed out. When they differ, the list is read
again in a handful of queries (``Store.list_runs`` and the bulk reads under it), and the
anomaly rules run again only for runs whose ``version`` changed.

The rows are shared between sessions and never copied: callers read them, never change
them.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime

from hlbd.anomalies import Thresholds, detect
from hlbd.store import Store, buckets, live_status, utcnow

LIVE_TTL = 2.0      # seconds a run list may be old
KEPT_THRESHOLDS = 4  # threshold settings whose anomaly counts are kept at once


def version(run: dict) -> tuple:
    """What changes whenever the trainer writes something about ``run``."""
    return (run["display_status"], str(run.get("heartbeat_at")), run.get("epochs"))


def report_time(run: dict) -> datetime | None:
    """When an imported run's report says it was written (its ``timestamp``: seconds
    since 1970 or an ISO time), as naive UTC; None if it has none or it cannot be read."""
    stamp = ((run.get("extra") or {}).get("report") or {}).get("timestamp")
    try:
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            return datetime.fromtimestamp(stamp, UTC).replace(tzinfo=None)
        if isinstance(stamp, str):
            when = datetime.fromisoformat(stamp.strip())
            return (when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def duration(run: dict, segments: list[tuple], now: datetime) -> float | None:
    """Seconds the run's segments ran: each from its start to its end (a live one to
    now, one that stopped without saying to its last heartbeat). None for an imported
    run's first segment, whose times are those of the import."""
    total = 0.0
    for segment, started, ended in segments:
        if run["source"] == "imported" and segment == 1:
            continue
        if ended is None:
            ended = now if run["display_status"] == "running" else run.get("heartbeat_at")
        if ended is not None:
            total += max(0.0, (ended - started).total_seconds())
    if run["source"] == "imported" and len(segments) <= 1:
        return None
    return total


def summaries(store: Store) -> list[dict]:
    """Every run, newest first, with what the runs table shows about it (no anomaly
    count: that depends on the thresholds, see RunList.rows).

    Besides Store.list_runs' fields: ``version``, ``rank`` (creation order, which fixes
    the run's colour), ``max_grad_norm``, ``nonfinite_steps``, ``started`` (None for an
    imported run: not recorded), ``duration`` (seconds its segments ran, None if not
    recorded), ``planned_epochs`` and ``report_time``.
    """
    rows = store.list_runs()
    extremes = buckets.grad_norm_extremes(store.engine)
    times = buckets.segment_times(store.engine)
    by_age = sorted(rows, key=lambda r: (r["created_at"], r["run_id"]))
    ranks = {r["run_id"]: i for i, r in enumerate(by_age)}
    now = utcnow()
    for run in rows:
        run["version"] = version(run)
        run["rank"] = ranks[run["run_id"]]
        run.update(extremes.get(run["run_id"], {"max_grad_norm": None,
                                                 "nonfinite_steps": None}))
        imported = run["source"] == "imported"
        run["started"] = None if imported else run["created_at"]
        run["duration"] = duration(run, times.get(run["run_id"], []), now)
        run["planned_epochs"] = (run["config"] or {}).get("epochs")
        run["report_time"] = report_time(run) if imported else None
    # Newest first by when each run started; an imported run by when its report was
    # written, else (not known) after every run whose time is known.
    rows.sort(key=lambda r: (r["started"] or r["report_time"] or datetime.min), reverse=True)
    return rows


def anomaly_counts(store: Store, runs: list[dict], thresholds: tuple) -> dict[str, int]:
    """How many flags the anomaly rules raise on each of ``runs``' effective epochs
    (and validation losses) under ``thresholds``, the epochs read in bulk."""
    ids = [r["run_id"] for r in runs]
    epochs = store.effective_epochs(ids)
    val_losses = store.epoch_values_of(ids, "val_loss")
    limits = Thresholds(**dict(thresholds))
    return {r["run_id"]: len(detect(r, epochs[r["run_id"]], (), limits,
                                    val_losses=val_losses[r["run_id"]])) for r in runs}


class RunList:
    """The run list of one store, kept current (see the module docstring)."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._checked = -math.inf
        self._marks: tuple | None = None
        self._base: list[dict] = []
        self._counts: dict[tuple, dict[tuple[str, tuple], int]] = {}  # thresholds ->
        self._rows: dict[tuple, list[dict]] = {}
        # One more each time the whole list was read again: what a table built from the
        # rows is keyed by, and what a test counts.
        self.generation = 0

    def rows(self, thresholds: tuple = ()) -> list[dict]:
        """Every run (summaries' rows) with ``anomalies``: its flag count under
        ``thresholds`` ((name, value) pairs overriding Thresholds' defaults)."""
        with self._lock:
            self._refresh()
            if thresholds not in self._rows:
                counts = self._counts.pop(thresholds, {})
                wanted = [r for r in self._base if (r["run_id"], r["version"]) not in counts]
                if wanted:
                    fresh = anomaly_counts(self.store, wanted, thresholds)
                    counts.update(((r["run_id"], r["version"]), fresh[r["run_id"]])
                                  for r in wanted)
                # Only the current versions; only the latest few threshold settings.
                self._counts[thresholds] = {(r["run_id"], r["version"]): counts[(
                    r["run_id"], r["version"])] for r in self._base}
                while len(self._counts) > KEPT_THRESHOLDS:
                    self._counts.pop(next(iter(self._counts)))
                self._rows[thresholds] = [
                    {**r, "anomalies": self._counts[thresholds][(r["run_id"], r["version"])]}
                    for r in self._base]
            return self._rows[thresholds]

    def _refresh(self) -> None:
        """Read the list again if the store changed or a running run's status aged."""
        if time.monotonic() - self._checked < LIVE_TTL:
            return
        marks = self.store.change_marks()
        now = utcnow()
        aged = any(live_status(r, now) != r["display_status"] for r in self._base
                   if r["status"] == "running")
        if marks != self._marks or aged:
            self._base = summaries(self.store)
            self._marks = marks
            self._rows = {}
            self.generation += 1
        self._checked = time.monotonic()
