"""Helpers for the resume tests: the columns a resume reproduces, waiting for a process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

# Per-epoch columns a resumed run must reproduce exactly (wall time and throughput differ).
EXACT_COLUMNS = ("epoch", "loss", "grad_norm", "grad_norm_max", "grad_norm_min", "steps",
                 "nonfinite_steps", "clipped_steps", "lr", "token_accuracy", "tokens")


def exact_metrics(epochs: list[dict]) -> list[tuple]:
    return [tuple(e[c] for c in EXACT_COLUMNS) for e in epochs]


def wait_until(condition: Callable[[], object], proc: subprocess.Popen,
               timeout: float = 120) -> object:
    """Poll ``condition`` until it returns something truthy; fail if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (exit {proc.returncode}) before the "
                                 f"condition held:\n{out}\n{err}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("condition not reached in time")
