"""Helpers for the resume tests: tiny configs, CLI subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hlbd.config import TrainConfig

# Per-epoch columns a resumed run must reproduce exactly (wall time and throughput differ).
EXACT_COLUMNS = ("epoch", "loss", "grad_norm", "grad_norm_max", "grad_norm_min", "steps",
                 "nonfinite_steps", "clipped_steps", "lr", "token_accuracy", "tokens")
# The same tiny model, as CLI flags; dropout > 0 so the random state matters on resume.
TINY_FLAGS = ["--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--d-ff", "64",
              "--batch-size", "16", "--dropout", "0.2", "--device", "cpu", "--quiet"]


def tiny(**overrides) -> TrainConfig:
    """The config TINY_FLAGS give, with a cosine cycle short enough to restart in a test."""
    values = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "batch_size": 16,
              "dropout": 0.2, "device": "cpu", "seed": 7, "t_0": 2, "t_mult": 2,
              "save_interval": 0, "step_flush_interval": 1000}
    return TrainConfig(**{**values, **overrides})


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
