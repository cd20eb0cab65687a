"""What the training loop tells the outside world, and the implementation that keeps it.

The loop calls a Recorder; it never sees SQL. ``StoreRecorder`` writes the run
database and the JSON report; ``NullRecorder`` records nothing (benchmarks).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

from hlbd.anomalies import Thresholds, detect
from hlbd.report import build_report, write_report
from hlbd.store import HEARTBEAT_SECONDS, Store

log = logging.getLogger(__name__)


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
    """Writes steps, epochs, checkpoints and heartbeats to the store, and the report.

    After each epoch it applies the anomaly rules to the run so far: each flag is a
    warning line and a row in ``anomalies``.
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
        self._epoch_steps: list[dict] = []
        self._last_beat = time.monotonic()

    def on_steps(self, steps: list[dict]) -> None:
        self.store.record_steps(self.run_id, self.segment, steps)
        self._epoch_steps.extend(steps)
        self._last_beat = time.monotonic()

    def on_epoch(self, epoch: dict, steps: list[dict], history: dict) -> None:
        self.store.record_epoch(self.run_id, self.segment, epoch, steps)
        self._last_beat = time.monotonic()
        write_report(self.run_dir, build_report(self.run_id, history, self.dataset_stats))
        self._epochs.append({**epoch, "segment": self.segment})
        flags = detect(self._run, self._epochs, [*self._epoch_steps, *steps],
                       self.thresholds, only_epoch=epoch["epoch"])
        self._epoch_steps = []
        for flag in flags:
            log.warning("anomaly [%s] %s", flag["rule"], flag["message"])
        self.store.record_anomalies(self.run_id, self.segment, flags)

    def on_checkpoint(self, epoch: int, path: Path, size_bytes: int) -> None:
        self.store.record_checkpoint(self.run_id, self.segment, epoch, str(path), size_bytes)

    def on_alive(self) -> None:
        if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
            self.store.heartbeat(self.run_id, self.segment)
            self._last_beat = time.monotonic()
