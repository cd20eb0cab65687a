"""Helpers for the resume tests: waiting for a process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


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
