"""What the training loop tells the outside world, and the implementation that keeps it.

The loop calls a Recorder; it never sees SQL. ``StoreRecorder`` writes the run
database and the JSON report from a thread of its own, so training never waits on the
store (under torchrun a slow write on rank 0 would stall every rank); ``NullRecorder``
records nothing (benchmarks, and the ranks other than 0).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from hlbd.anomalies import Thresholds, detect
from hlbd.report import build_report, write_report
from hlbd.store import HEARTBEAT_SECONDS, Store

log = logging.getLogger(__name__)
# The history lists the report holds (the loop appends to them while the writer reads).
REPORT_LISTS = ("control_losses", "batch_losses", "grad_norms", "learning_rates")


class Recorder(Protocol):
    def on_steps(self, steps: list[dict]) -> None:
        """A batch of finished optimizer steps (mid-epoch flush)."""

    def on_epoch(self, epoch: dict, steps: list[dict], history: dict) -> None:
        """An epoch ended: its row, its steps not yet sent, and the whole history."""

    def on_checkpoint(self, epoch: int, path: Path, size_bytes: int) -> None:
        """A checkpoint was written."""

    def on_alive(self) -> None:
        """Called after every optimizer step; cheap unless a heartbeat is due."""

    def close(self) -> None:
        """Everything handed over is recorded (or its error raised); called at every exit."""


class NullRecorder:
    """Records nothing: the baseline for measuring what recording costs."""

    def on_steps(self, steps: list[dict]) -> None:
        pass

    def on_epoch(self, epoch: dict, steps: list[dict], history: dict) -> None:
        pass

    def on_checkpoint(self, epoch: int, path: Path, size_bytes: int) -> None:
        pass

    def on_alive(self) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingFailed(Exception):
    """A write to the store or the report failed in the recording thread."""


class BackgroundWriter:
    """One thread that runs the writes handed to it, in order, off the caller's thread.

    The first error stops the writing (nothing after a gap is written, so the record
    stays in order) and is raised in the caller at its next ``submit``, ``drain`` or
    ``close``.
    """

    def __init__(self, name: str = "hlbd-recorder"):
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._reported = False
        self.busy_seconds = 0.0  # spent writing (benchmarks read it)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, write: Callable[..., Any], *args: Any) -> None:
        self.check()
        self._queue.put((write, args))

    def check(self) -> None:
        """Raise the writer's error, if it has one (cheap: an attribute test)."""
        if self._error is not None:
            self._raise_error()

    def drain(self) -> None:
        """Wait until everything submitted is written."""
        self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Write what is left and end the thread; idempotent."""
        if self._thread.is_alive():
            self._queue.put(None)
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
            item = self._queue.get()
            try:
                if item is None:
                    return
                write, args = item
                if self._error is None:
                    started = time.perf_counter()
                    write(*args)
                    self.busy_seconds += time.perf_counter() - started
            except Exception as exc:  # noqa: BLE001 - raised in the training thread
                self._error = exc
            finally:
                self._queue.task_done()


class StoreRecorder:
    """Writes steps, epochs, checkpoints and heartbeats to the store, and the report.

    After each epoch it applies the anomaly rules to the run so far: each flag is a
    warning line and a row in ``anomalies``. The writes run in a ``BackgroundWriter``,
    in the order they were handed over; they are drained before a checkpoint is
    recorded and by ``close`` (which the runner calls on every exit).
    """

    def __init__(self, store: Store, run_id: str, segment: int, run_dir: Path,
                 dataset_stats: dict, config: dict,
                 thresholds: Thresholds | None = None):
        self.store = store
        self.run_id = run_id
        self.segment = segment
        self.run_dir = Path(run_dir)
        self.dataset_stats = dataset_stats
        self.thresholds = thresholds or Thresholds()
        self._run = {"run_id": run_id, "config": config}
        self._epochs = store.epochs(run_id)  # the effective history this segment extends
        self._epoch_steps: list[dict] = []  # touched by the writer thread only
        self._last_beat = time.monotonic()
        self._writer = BackgroundWriter()

    def on_steps(self, steps: list[dict]) -> None:
        self._writer.submit(self._write_steps, steps)
        self._last_beat = time.monotonic()

    def on_epoch(self, epoch: dict, steps: list[dict], history: dict) -> None:
        # The loop goes on appending to the history lists: hand over their lengths now.
        lengths = {key: len(history[key]) for key in REPORT_LISTS}
        self._writer.submit(self._write_epoch, epoch, steps, history, lengths)
        self._last_beat = time.monotonic()

    def on_checkpoint(self, epoch: int, path: Path, size_bytes: int) -> None:
        # Every epoch up to the checkpoint is in the store before the checkpoint is.
        self._writer.drain()
        self.store.record_checkpoint(self.run_id, self.segment, epoch, str(path), size_bytes)

    def on_alive(self) -> None:
        self._writer.check()  # a failed write stops training at the next step
        if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
            self._writer.submit(self.store.heartbeat, self.run_id, self.segment)
            self._last_beat = time.monotonic()

    def close(self) -> None:
        self._writer.close()

    @property
    def busy_seconds(self) -> float:
        """Time the recording thread has spent writing (off the training thread)."""
        return self._writer.busy_seconds

    def _write_steps(self, steps: list[dict]) -> None:
        self.store.record_steps(self.run_id, self.segment, steps)
        self._epoch_steps.extend(steps)

    def _write_epoch(self, epoch: dict, steps: list[dict], history: dict,
                     lengths: dict[str, int]) -> None:
        self.store.record_epoch(self.run_id, self.segment, epoch, steps)
        until_now = {key: history[key][:n] for key, n in lengths.items()}
        write_report(self.run_dir, build_report(self.run_id, until_now, self.dataset_stats))
        self._epochs.append({**epoch, "segment": self.segment})
        flags = detect(self._run, self._epochs, [*self._epoch_steps, *steps],
                       self.thresholds, only_epoch=epoch["epoch"])
        self._epoch_steps = []
        for flag in flags:
            log.warning("anomaly [%s] %s", flag["rule"], flag["message"])
        self.store.record_anomalies(self.run_id, self.segment, flags)
