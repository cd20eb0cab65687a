"""Helpers for the edge-case tests: waiting for a condition."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable

from sqlalchemy.exc import OperationalError

from hlbd.errors import HlbdError


def wait_for(condition: Callable[[], object], proc: subprocess.Popen | None = None,
             timeout: float = 120, every: float = 0.02) -> object:
    """Poll ``condition`` until it returns something truthy; fail if ``proc`` ends first
    or the time runs out. A database not there yet (or without tables yet) is "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (sqlite3.OperationalError, HlbdError, OperationalError):
            value = None  # no database yet, or no tables in it yet
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (exit {proc.returncode}) before the "
                                 f"condition held:\n{out}\n{err}")
        time.sleep(every)
    raise AssertionError(f"condition not reached in {timeout} s")
