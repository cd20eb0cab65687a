"""Launching torchrun in a test: launch, wait with a deadline, and never leave a process.

torchrun starts each worker in a session of its own, so killing torchrun's process group
does not reach them: cleanup walks the process tree and kills every descendant that
carries the launch's own token in its environment (never a process that merely reused
a pid).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from helpers.procs import env as child_env
from hlbd.data import bundled_dataset

# Long enough for a loaded 2-core CI machine, short enough that a hang fails the test.
LAUNCH_TIMEOUT = 240


def torchrun_command(*args: str, nproc: int = 2, rendezvous: list[str] | None = None,
                     module: str | None = "hlbd") -> list[str]:
    """``python -m torch.distributed.run ... -m hlbd ARGS`` (``module`` None: a script)."""
    launcher = rendezvous or ["--standalone"]
    target = ["-m", module] if module else []
    return [sys.executable, "-m", "torch.distributed.run", *launcher,
            f"--nproc-per-node={nproc}", "--monitor-interval=0.1", *target, *args]


class Launched:
    """A running torchrun (or any command) whose whole process tree is ours to end. It
    answers ``poll``, ``returncode``, ``communicate`` and ``kill`` as a Popen would, so
    ``wait_until`` can watch it."""

    def __init__(self, command: list[str], cwd: Path, env: dict | None = None):
        self.out_path = cwd / f"launch-{time.monotonic_ns()}.out"
        self._out = open(self.out_path, "w+")  # noqa: SIM115 - closed by kill()
        self._token = uuid.uuid4().hex
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=self._out,
                                     stderr=subprocess.STDOUT, text=True,
                                     env={**child_env(), "OMP_NUM_THREADS": "1", **(env or {}),
                                          "HLBD_TEST_LAUNCH": self._token},
                                     start_new_session=True)
        self._tree: set[int] = set()
        self.left_behind: list[int] = []  # processes of the launch alive when it ended

    def children(self) -> dict[int, int]:
        """The worker processes torchrun started: {rank: pid}."""
        found = {}
        for pid in descendants(self.proc.pid):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for entry in environ:
                if entry.startswith(b"RANK="):
                    found[int(entry[5:])] = pid
        return found

    def wait(self, timeout: float = LAUNCH_TIMEOUT) -> tuple[int, str]:
        """(exit status, output) once torchrun ends; kills everything past ``timeout``."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"torchrun did not end within {timeout} s:\n"
                                 f"{self.output()}") from None
        finally:
            self.left_behind = self._ours()
            self.kill()  # workers torchrun left behind, if any
        return self.proc.returncode, self.output()

    def poll(self) -> int | None:
        """torchrun's exit status, or None while it runs; notes the process tree first, so
        that ``kill`` reaches the workers even once torchrun is gone."""
        self.remember_tree()
        return self.proc.poll()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def communicate(self) -> tuple[str, str]:
        """(output, "") of the launch, after killing what is left of it: what
        ``wait_until`` reads of a process that ended (or ran out of time)."""
        self.kill()
        return self.output(), ""

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.out_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the command and every process of this launch below it."""
        if self.proc.poll() is None:
            self._tree |= descendants(self.proc.pid)
        self.proc.kill()  # a no-op once it has ended (Popen knows it was reaped)
        for pid in self._ours():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._out.close()

    def _ours(self) -> list[int]:
        """The seen descendants still running with this launch's token."""
        token = f"HLBD_TEST_LAUNCH={self._token}".encode()
        found = []
        for pid in sorted(self._tree):
            try:
                ours = token in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue  # gone
            if ours and alive(pid):
                found.append(pid)
        return found

    def remember_tree(self) -> None:
        """Note the current descendants, so ``kill`` reaches them after torchrun is gone."""
        self._tree |= descendants(self.proc.pid)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc, children of every thread)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            for kid in kids:
                if kid not in found:
                    found.add(kid)
                    frontier.append(kid)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def small_dataset(path: Path, pairs: int = 37) -> Path:
    """The first ``pairs`` facts of the bundled data as an HLBD Hardcore file: 37 with a
    batch of 4 ends every epoch on a one-sequence batch, of which rank 1 has no share."""
    facts = bundled_dataset()["data"]["arithmetic"][:pairs]
    path.write_text(json.dumps({"data": {"arithmetic": facts}}, ensure_ascii=False))
    return path


def run_script(source: str, folder: Path, *args: str) -> tuple[str, list[dict]]:
    """``source`` run as a script on 2 ranks under torchrun with ``args``, waited for;
    it must succeed and leave no process behind. Returns its output and what each rank
    wrote to ``folder``/rank<R>.json, in rank order."""
    script = folder / "script.py"
    script.write_text(source)
    launch = Launched(torchrun_command(str(script), *args, module=None), folder)
    code, output = launch.wait()
    assert code == 0, output
    assert launch.left_behind == []
    return output, [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
