"""Helpers for the resume tests: CLI subprocesses, the columns a resume reproduces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Per-epoch columns a resumed run must reproduce exactly (wall time and throughput differ).
EXACT_COLUMNS = ("epoch", "loss", "grad_norm", "grad_norm_max", "grad_norm_min", "steps",
                 "nonfinite_steps", "clipped_steps", "lr", "token_accuracy", "tokens")


def exact_metrics(epochs: list[dict]) -> list[tuple]:
    return [tuple(e[c] for c in EXACT_COLUMNS) for e in epochs]


def spawn_hlbd(*args: str) -> subprocess.Popen:
    """Start ``python -m hlbd ARGS`` in the background."""
    return subprocess.Popen([sys.executable, "-m", "hlbd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


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


def kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL, as a power loss or the OOM killer would, and reap the process."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
