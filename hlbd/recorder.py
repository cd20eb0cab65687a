"""What the training loop tells the outside world, and the implementation that keeps it.

The loop calls a Recorder; it never sees SQL. ``StoreRecorder`` writes the run
database and the JSON report; ``NullRecorder`` records nothing (benchmarks).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from hlbd.report import build_report, write_report
from hlbd.store import HEARTBEAT_SECONDS, Store


class Recorder(Protocol):
    def on_steps(self, steps: list[dict]) -> None:
        """A batch of finished optimizer steps (mid-epoch flush)."""

    def on_epoch(self, epoch: dict, steps: list[dict], history: dict) -> None:
        """An epoch ended: its row, its steps not yet sent, and the whole history."""

    def on_checkpoint(self, epoch: int, path: Path, size_bytes: int) -> None:
        """A checkpoint was written."""

    def on_alive(self) -> None:
        """Called after every optimizer step; cheap unless a heartbeat is due."""


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


class StoreRecorder:
    """Writes steps, epochs, checkpoints and heartbeats to the store, and the report."""

    def __init__(self, store: Store, run_id: str, segment: int, run_dir: Path,
                 dataset_stats: dict):
        self.store = store
        self.run_id = run_id
        self.segment = segment
        self.run_dir = Path(run_dir)
        self.dataset_stats = dataset_stats
        self._last_beat = time.monotonic()

    def on_steps(self, steps: list[dict]) -> None:
        self.store.record_steps(self.run_id, self.segment, steps)
        self._last_beat = time.monotonic()

    def on_epoch(self, epoch: dict, steps: list[dict], history: dict) -> None:
        self.store.record_epoch(self.run_id, self.segment, epoch, steps)
        self._last_beat = time.monotonic()
        write_report(self.run_dir, build_report(self.run_id, history, self.dataset_stats))

    def on_checkpoint(self, epoch: int, path: Path, size_bytes: int) -> None:
        self.store.record_checkpoint(self.run_id, self.segment, epoch, str(path), size_bytes)

    def on_alive(self) -> None:
        if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
            self.store.heartbeat(self.run_id)
            self._last_beat = time.monotonic()
