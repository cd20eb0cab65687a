"""The processes a test starts: their environment, starting them so that none outlives the
test, waiting on them (wait_until, the one polling loop), ending them, and a free port."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy.exc import OperationalError

from hlbd.errors import HlbdError

REPO = Path(__file__).resolve().parents[2]
# What reading a store raises while its database or its tables are not there yet.
NOT_YET = (sqlite3.OperationalError, OperationalError, HlbdError)


def env() -> dict:
    """This environment for a child process: the checkout first on PYTHONPATH, and no
    HLBD_DB or HLBD_RUNS_DIR (a test says where its store and runs go)."""
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


def spawn_hlbd(*args: str) -> subprocess.Popen:
    """Start ``python -m hlbd ARGS`` in the background."""
    return subprocess.Popen([sys.executable, "-m", "hlbd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    """Wait for ``proc`` (killing its group past ``timeout``); (exit status, out, err)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"process ran past {timeout} s:\n{out}\n{err}") from None
    return proc.returncode, out or "", err or ""


class Watched(Protocol):
    """What ``wait_until`` needs of a process: a Popen has it, so has a torchrun Launched."""

    returncode: int | None

    def poll(self) -> int | None: ...

    def communicate(self) -> tuple[str | None, str | None]: ...

    def kill(self) -> None: ...


def wait_until(condition: Callable[[], object], proc: Watched | None = None,
               timeout: float = 120, every: float = 0.02) -> object:
    """Poll ``condition`` every ``every`` s until it returns something truthy; return that.

    A database or its tables not there yet (NOT_YET raised) counts as "not yet"; the last
    such error is in the message if the time runs out. ``proc`` (a Popen, a torchrun
    Launched): fail with its output if it ends before the condition holds, and kill it if
    the time runs out.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        # Polled before the condition is read: a process that ends right after making it
        # true is not failed, and a Launched has noted its process tree by then.
        ended = proc is not None and proc.poll() is not None
        try:
            value = condition()
        except NOT_YET as exc:
            value, last = None, exc
        if value:
            return value
        if ended:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (exit {proc.returncode}) before the "
                                 f"condition held:\n{out}\n{err}")
        time.sleep(every)
    name = getattr(condition, "__name__", "<lambda>")
    message = f"{'condition' if name == '<lambda>' else name} not reached in {timeout} s"
    if last is not None:
        message += f"; the last try raised {type(last).__name__}: {last}"
    if proc is not None:
        proc.kill()
        out, err = proc.communicate()
        message += f"\n{out}\n{err}"
    raise AssertionError(message)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL, as a power loss or the OOM killer would, and reap the process."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
