"""Where hlbd.Run's values go: the run database and the JSON report, off the loop's thread.

``StoreRecorder`` writes from a thread of its own (``BackgroundWriter``), so training
never waits on the store (under torchrun a slow write on rank 0 would stall every
rank). A loop never sees it: it records through ``hlbd.Run``, which hands it its
values; a Run with no store (the ranks other than 0) has none.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import exc

from hlbd.anomalies import Thresholds, detect
from hlbd.checkpoint import prune_checkpoints
from hlbd.report import add_epoch, build_report, history_of, write_report
from hlbd.store import HEARTBEAT_SECONDS, Store

log = logging.getLogger(__name__)


class RecordingFailed(Exception):
    """A write to the store or the report failed in the recording thread."""


# What may wait in memory for the store (a slow or locked database): step rows (about
# half a kilobyte each as dicts) plus one per write. Beyond it the loop waits.
MAX_PENDING_ROWS = 200_000
# The JSON report is rewritten at most this often while training (as TensorBoard's
# writer flushes every flush_secs), and always when the recorder closes: rewriting the
# whole history every epoch cost more than the epoch's rows, and grows with the run.
REPORT_SECONDS = 2.0
# How long a write waits between tries while another process holds the store's lock
# (each try already waits the busy timeout inside the database driver).
LOCKED_RETRY_SECONDS = 0.05


class BackgroundWriter:
    """One thread that runs the writes handed to it, in order, off the caller's thread.

    At most ``max_pending`` rows wait (each write counts its ``rows``, at least 1);
    beyond that ``submit`` waits for the thread, and says so once. The first error stops
    the writing (nothing after a gap is written, so the record stays in order) and is
    raised in the caller at its next ``submit``, ``drain`` or ``close``.
    """

    def __init__(self, name: str = "hlbd-recorder", max_pending: int = MAX_PENDING_ROWS):
        self.max_pending = max_pending
        self._items: deque = deque()
        self._pending = 0  # rows submitted and not yet written (or skipped)
        self._unfinished = 0  # writes submitted and not yet done
        self._changed = threading.Condition()
        self._closing = False
        self._error: BaseException | None = None
        self._reported = False
        self._said_behind = False
        self.busy_seconds = 0.0  # spent writing (benchmarks read it)
        self.waited_seconds = 0.0  # the caller spent waiting for room in the queue
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, write: Callable[..., Any], *args: Any, rows: int = 1) -> None:
        """Hand ``write(*args)`` to the thread; waits only while the queue is full."""
        self.check()
        rows = max(1, rows)
        with self._changed:
            # A write larger than the bound alone still goes in, once the queue is empty.
            if self._pending and self._pending + rows > self.max_pending:
                if not self._said_behind:
                    self._said_behind = True
                    log.warning("recording is behind: %d rows wait for the store (slow or "
                                "locked by another process); training waits for room "
                                "in the queue", self._pending)
                started = time.perf_counter()
                self._changed.wait_for(lambda: not self._pending
                                       or self._pending + rows <= self.max_pending)
                self.waited_seconds += time.perf_counter() - started
            self._items.append((write, args, rows))
            self._pending += rows
            self._unfinished += 1
            self._changed.notify_all()

    def check(self) -> None:
        """Raise the writer's error, if it has one (cheap: an attribute test)."""
        if self._error is not None:
            self._raise_error()

    def drain(self) -> None:
        """Wait until everything submitted is written."""
        with self._changed:
            self._changed.wait_for(lambda: not self._unfinished)
        self._raise_error()

    def close(self) -> None:
        """Write what is left and end the thread; idempotent."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            error = self._error
            raise RecordingFailed(f"recording failed: {type(error).__name__}: "
                                  f"{error}".strip()) from error

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._items or self._closing)
                if not self._items:
                    return  # closing, and everything handed over is done
                write, args, rows = self._items.popleft()
            try:
                if self._error is None:
                    started = time.perf_counter()
                    write(*args)
                    self.busy_seconds += time.perf_counter() - started
            except Exception as error:  # noqa: BLE001 - raised in the training thread
                self._error = error
            finally:
                with self._changed:
                    self._pending -= rows
                    self._unfinished -= 1
                    self._changed.notify_all()


def store_locked(error: BaseException) -> bool:
    """Whether ``error`` says only that another process holds the database's lock.

    SQLite: "database is locked" (or busy) after its busy timeout; PostgreSQL: the
    session's lock_timeout ran out (SQLSTATE 55P03). Nothing was written: the
    transaction rolled back, so the same write can be tried again.
    """
    if not isinstance(error, exc.OperationalError):
        return False
    original = error.orig
    if getattr(original, "sqlstate", None) == "55P03":
        return True
    message = str(original).lower()
    return isinstance(original, sqlite3.OperationalError) and (
        "database is locked" in message or "database is busy" in message)


def wait_out_locks(write: Callable[..., Any], *args: Any,
                   give_up: Callable[[], bool] = lambda: False,
                   meanwhile: str = "the record waits for it (training goes on)") -> Any:
    """``write(*args)`` (one store transaction), tried again for as long as another
    process holds the store's lock: a long import, a copy or a backup delays the
    record, never ends it. Any other error is raised at once, and the lock error once
    ``give_up()`` says so (a stop asked for while waiting). ``meanwhile``: what the
    line said once says happens while it waits."""
    said = False
    while True:
        try:
            return write(*args)
        except exc.OperationalError as error:
            if not store_locked(error) or give_up():
                raise
            if not said:
                said = True
                log.warning("the run database is locked by another process; %s", meanwhile)
            time.sleep(LOCKED_RETRY_SECONDS)


class StoreRecorder:
    """Writes steps, epochs, checkpoints and heartbeats to the store, and the report.

    After each epoch it applies the anomaly rules to the run so far: each flag is a
    warning line and a row in ``anomalies``; the report is rewritten at most every
    REPORT_SECONDS, and at ``close``. The writes run in a ``BackgroundWriter``,
    in the order they were handed over, each waiting out another process's lock on the
    store. A checkpoint's row is one of those writes: it is written after every row
    handed over before it, so an epoch's rows are committed when its checkpoint is,
    without the loop waiting for them. ``close`` (which Run.finish calls on every exit)
    writes what is left.
    """

    def __init__(self, store: Store, run_id: str, segment: int, run_dir: Path,
                 dataset_stats: dict, config: dict,
                 thresholds: Thresholds | None = None,
                 max_pending: int = MAX_PENDING_ROWS, keep_checkpoints: int = 0):
        self.store = store
        self.run_id = run_id
        self.segment = segment
        self.run_dir = Path(run_dir)
        self.dataset_stats = dataset_stats
        self.thresholds = thresholds or Thresholds()
        self.keep_checkpoints = keep_checkpoints  # --keep-checkpoints; 0 keeps all
        self._run = {"run_id": run_id, "config": config}
        self._epochs = store.epochs(run_id)  # the effective history this segment extends
        self._val_losses = store.epoch_values(run_id, "val_loss")  # and its evaluations
        self._epoch_steps: list[dict] = []  # touched by the writer thread only
        self._last_beat = time.monotonic()
        self._report_due: tuple[dict, dict[str, int]] | None = None  # writer thread only
        self._history: dict | None = None  # on_logged's report history (writer thread)
        self._report_written = -math.inf  # time.monotonic() of the last report
        self._closed = False
        self._writer = BackgroundWriter(max_pending=max_pending)

    def on_logged(self, logged: Callable[[], tuple[list[dict], list[tuple], dict | None]],
                  rows: int) -> None:
        """Values a loop logged (hlbd.Run): ``logged()``, called on the recording thread
        (where their tensors move to the host), returns the steps, the points and the
        epoch row they close (None mid-epoch). The report's history is kept here."""
        self._writer.submit(self._write_logged, logged, rows=rows)
        self._last_beat = time.monotonic()

    def on_checkpoint(self, epoch: int, path: Path, size_bytes: int,
                      step: int | None = None) -> None:
        # Queued behind every row handed over before it: in the store, no checkpoint is
        # ahead of its epoch's rows.
        self._writer.submit(wait_out_locks, self.store.record_checkpoint, self.run_id,
                            self.segment, epoch, str(path), size_bytes, step)
        if self.keep_checkpoints:
            # Behind the new checkpoint's row: older files go only once it is recorded.
            self._writer.submit(wait_out_locks, prune_checkpoints, self.store, self.run_id,
                                self.segment, self.keep_checkpoints)

    def on_alive(self) -> None:
        self._writer.check()  # a failed write stops training at the next step
        if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
            self._writer.submit(wait_out_locks, self.store.heartbeat, self.run_id,
                                self.segment)
            self._last_beat = time.monotonic()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to tell
                self._write_report(True)
            raise
        # The thread has ended: the report of every epoch recorded, once.
        self._write_report(True)

    @property
    def busy_seconds(self) -> float:
        """Time the recording thread has spent writing (off the training thread)."""
        return self._writer.busy_seconds

    @property
    def waited_seconds(self) -> float:
        """Time the training thread spent waiting for room in a full queue."""
        return self._writer.waited_seconds

    def _write_report(self, now: bool) -> None:
        """The report of the epochs recorded so far, if due (``now``: if not written)."""
        if self._report_due is None:
            return
        if not now and time.monotonic() - self._report_written < REPORT_SECONDS:
            return
        history, lengths = self._report_due
        until_now = {key: history[key][:n] for key, n in lengths.items()}
        write_report(self.run_dir, build_report(self.run_id, until_now, self.dataset_stats))
        self._report_due, self._report_written = None, time.monotonic()

    def _write_steps(self, steps: list[dict], points: list[tuple] = ()) -> None:
        wait_out_locks(self.store.record_steps, self.run_id, self.segment, steps, points)
        self._epoch_steps.extend(steps)

    def _write_logged(self, logged) -> None:
        if self._history is None:
            # The effective history this segment continues, read before its first write
            # (its steps flushed mid-epoch would be in it twice).
            self._history = history_of(self.store.epochs(self.run_id),
                                       self.store.steps(self.run_id))
        steps, points, epoch = logged()
        if epoch is None:
            self._write_steps(steps, points)
            return
        add_epoch(self._history, epoch, [*self._epoch_steps, *steps])
        lengths = {key: len(values) for key, values in self._history.items()}
        self._write_epoch(epoch, steps, self._history, lengths, points)

    def _write_epoch(self, epoch: dict, steps: list[dict], history: dict,
                     lengths: dict[str, int], points: list[tuple] = ()) -> None:
        wait_out_locks(self.store.record_epoch, self.run_id, self.segment, epoch, steps,
                       points)
        self._report_due = history, lengths
        self._write_report(False)
        self._epochs.append({**epoch, "segment": self.segment})
        self._val_losses.update((n, value) for key, scope, _, n, value in points
                                if key == "val_loss" and scope == "epoch")
        flags = detect(self._run, self._epochs, [*self._epoch_steps, *steps],
                       self.thresholds, only_epoch=epoch["epoch"],
                       val_losses=self._val_losses)
        self._epoch_steps = []
        for flag in flags:
            log.warning("anomaly [%s] %s", flag["rule"], flag["message"])
        wait_out_locks(self.store.record_anomalies, self.run_id, self.segment, flags)
