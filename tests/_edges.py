"""Helpers for the edge-case tests: processes that are always reaped."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import OperationalError

from hlbd.errors import HlbdError

REPO = Path(__file__).resolve().parents[1]


def env() -> dict:
    values = dict(os.environ)
    values["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), values.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    values.pop("HLBD_DB", None)
    values.pop("HLBD_RUNS_DIR", None)
    return values


class Procs:
    """Processes a test starts, each in its own process group, all killed (the whole
    group) when the test ends however it ends, so nothing outlives a failed test."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, argv: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(argv, env=env(), start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    def hlbd(self, *args: str, **kwargs) -> subprocess.Popen:
        return self.start([sys.executable, "-m", "hlbd", *map(str, args)], **kwargs)

    def python(self, code: str, *args: str, **kwargs) -> subprocess.Popen:
        return self.start([sys.executable, "-c", code, *map(str, args)], **kwargs)

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=30)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    """Wait for ``proc`` (killing its group past ``timeout``); (exit status, out, err)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"process ran past {timeout} s:\n{out}\n{err}") from None
    return proc.returncode, out or "", err or ""


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


def files_beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())
