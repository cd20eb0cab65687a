"""How a training process lives and ends: stop signals, output that cannot be written,
torchrun ranks, and the exit code that says how the run went.

The commands (hlbd.cli.train) hand ``run_as_rank`` the function that starts their run;
everything about the process around it is here.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from hlbd.errors import HlbdError

if TYPE_CHECKING:
    from hlbd import runner

# hlbd.runner and hlbd.distributed import torch: they are imported where a run starts, so
# every other command (and --help) starts without it.


def refuse_torchrun_restart() -> None:
    """A torchrun that restarted its processes (--max-restarts) must not start a second run."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0) > 0:
        raise HlbdError("torchrun restarted the training processes (--max-restarts): "
                        "`hlbd train` would start a second run; to continue the first, "
                        "give torchrun `-m hlbd resume --run-id ID` instead")


class StopRequest:
    """The "please stop" request the training code polls (a plain callable).

    Until the code first polls it, nothing has been recorded, so a stop signal stops at
    once (a KeyboardInterrupt from wherever it is, e.g. loading a dataset); from the
    first poll on, the first Ctrl-C or any SIGTERM only asks for a stop, which the code
    acts on where it is safe. ``signal`` is the first stop signal received.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.polled = False

    def __call__(self) -> bool:
        self.polled = True
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM


@contextmanager
def stop_on_signals(announce: bool = True):
    """First Ctrl-C or SIGTERM (what job schedulers, `docker stop` and `kill` send): stop at
    the next batch, checkpoint the last finished epoch, mark interrupted. A Ctrl-C after
    that aborts at once; a repeated SIGTERM changes nothing (the checkpoint goes on).

    Under torchrun the parent forwards the signal it gets to every rank; ``announce``
    is False on all but rank 0, so the stop is said once."""
    request = StopRequest()

    def handler(signum, frame):
        if not request.polled:  # nothing recorded yet: stop right here
            request.signal = request.signal or signum
            raise KeyboardInterrupt
        if request.signal is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        request.signal = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if announce:
            sys.stderr.write(f"\nstopping ({name}): saving a checkpoint of the last "
                             "finished epoch (Ctrl-C again to abort)\n")
            sys.stderr.flush()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class TolerantStream:
    """A text stream whose write errors (a closed pipe, a full disk) are remembered, not
    raised: the run's record must not depend on whether its output can be written."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.error: OSError | None = None

    def write(self, text: str) -> int:
        if self.error is None:
            try:
                self._stream.write(text)
            except OSError as error:
                self._lost(error)
        return len(text)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._stream.flush()
            except OSError as error:
                self._lost(error)

    def _lost(self, error: OSError) -> None:
        self.error = error
        # What is still buffered would fail again when Python flushes at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextmanager
def tolerant_output():
    """stdout and stderr as TolerantStreams for the length of a run."""
    streams = sys.stdout, sys.stderr
    with ExitStack() as files:
        # A stream closed before the start (`2>&-`) is None: it writes to /dev/null, which
        # also takes the free descriptor, so no file opened later (the database) gets it.
        sys.stdout, sys.stderr = (TolerantStream(
            stream if stream is not None else files.enter_context(open(os.devnull, "w")))
            for stream in streams)
        try:
            yield sys.stdout, sys.stderr
        finally:
            sys.stdout, sys.stderr = streams


@contextmanager
def recorded_run(main: bool = True):
    """Stop signals handled and output that cannot be written dropped, for one train or
    resume; exits with the status that says how it went:

    0 finished; 130 / 143 stopped by Ctrl-C / SIGTERM (interrupted, or stopped before the
    run existed); 1 failed or refused; a finished run whose stdout could not be written
    exits 141 (a closed pipe, as SIGPIPE would) or 1 (another write error).
    ``main``: False on torchrun ranks other than 0, which say nothing (rank 0 does).
    """
    from hlbd import runner

    with tolerant_output() as (out, err), stop_on_signals(announce=main) as should_stop:
        outcome: list[runner.RunOutcome] = []
        say = err.write if main else len
        try:
            yield should_stop, outcome.append
        except runner.StoppedBeforeStart as stopped:
            say(f"{stopped}\n")
            sys.exit(should_stop.exit_code)
        except KeyboardInterrupt:
            if not should_stop.polled:
                say("stopped before the run started: nothing was recorded\n")
                sys.exit(should_stop.exit_code)
            say("aborted by a second Ctrl-C\n")
            sys.exit(130)
        (result,) = outcome
        if main:
            out.write(f"{result.status}: run {result.run_id} at epoch {result.last_epoch}; "
                      f"folder {result.run_dir}\n")
            if result.status == "interrupted":
                out.write(f"continue with: hlbd resume --run-id {result.run_id}\n")
            out.flush()
        if out.error is not None:
            err.write(f"note: stdout could not be written ({out.error.strerror or out.error}); "
                      f"the run is recorded: {result.status}: run {result.run_id} at epoch "
                      f"{result.last_epoch}\n")
        err.flush()
    if result.status == "interrupted":
        sys.exit(should_stop.exit_code)
    if out.error is not None:
        sys.exit(141 if out.error.errno == errno.EPIPE else 1)


def run_as_rank(timeout: float, lead: Callable[..., runner.RunOutcome]) -> None:
    """Run ``lead(ranks, should_stop)`` on rank 0 (or alone) and report how the run
    ended; the other torchrun ranks follow it and print nothing.

    An error of rank 0 before training is raised on rank 0 and on the first process of
    every other machine (the rest exit 1 quietly: one line per machine, not per rank).
    """
    from hlbd import distributed, runner

    ranks = distributed.from_environment(timeout)
    try:
        with recorded_run(main=ranks.is_main) as (should_stop, report):
            if ranks.is_main:
                with ranks.leading():
                    report(lead(ranks, should_stop))
            else:
                logging.getLogger("hlbd").setLevel(logging.WARNING)  # rank 0 tells it
                try:
                    report(runner.follow(ranks, should_stop=should_stop))
                except distributed.LeaderFailed:
                    if ranks.local_rank == 0:
                        raise
                    sys.exit(1)
    finally:
        ranks.close()
