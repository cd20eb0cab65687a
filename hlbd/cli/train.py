"""``hlbd train`` and ``hlbd resume``."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import click

from hlbd.cli.options import db_option
from hlbd.config import (
    DDP_TIMEOUT_SECONDS,
    RESUME_SETTABLE,
    TrainConfig,
    check_overrides,
    name_problem,
)
from hlbd.errors import HlbdError
from hlbd.store import Store

if TYPE_CHECKING:
    from hlbd import runner

# hlbd.runner and hlbd.distributed import torch: they are imported where a run starts, so
# every other command (and --help) starts without it.

DEFAULTS = TrainConfig()

# (flag, config field, type, help)
TRAIN_FLAGS = [
    ("--epochs", "epochs", int, "Number of epochs (with --resume: the new total)."),
    ("--seed", "seed", int, "Seed for init, data mixing and order."),
    ("--lr", "lr", float, "Peak learning rate (AdamW)."),
    ("--batch-size", "batch_size", int,
     "Sequences per micro-batch, over all processes under torchrun (split evenly)."),
    ("--grad-accum", "grad_accum", int, "Micro-batches per optimizer step."),
    ("--max-grad-norm", "max_grad_norm", float, "Clip the total grad norm (0: never)."),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay."),
    ("--t-0", "t_0", int, "CosineAnnealingWarmRestarts T_0, in epochs."),
    ("--t-mult", "t_mult", int, "CosineAnnealingWarmRestarts T_mult."),
    ("--eta-min", "eta_min", float, "CosineAnnealingWarmRestarts eta_min."),
    ("--save-interval", "save_interval", int, "Checkpoint every N epochs (and at the end)."),
    ("--keep-checkpoints", "keep_checkpoints", int,
     "Keep the newest N checkpoint files (0: all); older ones go once a newer one is saved."),
    ("--d-model", "d_model", int, "Model width."),
    ("--n-layers", "n_layers", int, "Transformer layers."),
    ("--n-heads", "n_heads", int, "Attention heads."),
    ("--d-ff", "d_ff", int, "Feed-forward width."),
    ("--max-seq-len", "max_seq_len", int, "Longest sequence; longer ones are truncated."),
    ("--dropout", "dropout", float, "Dropout rate."),
    ("--device", "device", str, "auto, cpu, cuda, cuda:1, ..."),
    ("--step-flush-interval", "step_flush_interval", int,
     "Write per-step rows every N optimizer steps (and at each epoch end)."),
]


def train_options(func, fields: Sequence[str] | None = None, default: str | None = None):
    """TRAIN_FLAGS (or those of ``fields``) as options; unset ones are None."""
    for flag, field, kind, help_text in reversed(TRAIN_FLAGS):
        if fields is None or field in fields:
            shown = default or getattr(DEFAULTS, field)
            func = click.option(flag, field, type=kind, default=None,
                                help=f"{help_text} [default: {shown}]")(func)
    return func


def resume_options(func):
    """The training flags a resume may change; the others are the checkpoint's."""
    return train_options(func, [f for f in RESUME_SETTABLE if f != "epochs"],
                         default="as in the checkpoint")


def runs_dir_option(func):
    return click.option("--runs-dir", envvar="HLBD_RUNS_DIR", default=None,
                        help="Where run folders go [default: ./hlbd_runs].")(func)


def ddp_timeout_option(func):
    return click.option(
        "--ddp-timeout", type=click.FloatRange(min=1), show_default=True,
        default=DDP_TIMEOUT_SECONDS,
        help="Under torchrun: seconds a rank waits for the others in any collective before "
             "the run fails (a rank that died or hangs).")(func)


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


def _print_run_id(run_id: str) -> None:
    sys.stdout.write(f"run_id: {run_id}\n")
    sys.stdout.flush()


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
    """Run ``lead(place, should_stop)`` on rank 0 (or alone) and report how the run
    ended; the other torchrun ranks follow it and print nothing.

    An error of rank 0 before training is raised on rank 0 and on the first process of
    every other machine (the rest exit 1 quietly: one line per machine, not per rank).
    """
    from hlbd import distributed, runner

    place = distributed.from_environment(timeout)
    try:
        with recorded_run(main=place.is_main) as (should_stop, report):
            if place.is_main:
                with place.leading():
                    report(lead(place, should_stop))
            else:
                logging.getLogger("hlbd").setLevel(logging.WARNING)  # rank 0 tells it
                try:
                    report(runner.follow(place, should_stop=should_stop))
                except distributed.LeaderFailed:
                    if place.local_rank == 0:
                        raise
                    sys.exit(1)
    finally:
        place.close()


@click.command()
@click.option("--dataset", "dataset", multiple=True,
              help="An HLBD file (Hardcore or Full format); repeatable.")
@click.option("--datasets", "datasets", multiple=True, type=str,
              help="Several HLBD files, space-separated after one flag.")
@click.option("--name", default=None,
              help="A name for the run (with --resume: for an older tool's checkpoint).")
@click.option("--resume", "resume", default=None, type=click.Path(dir_okay=False),
              help="Continue from this checkpoint file (the run id comes from it).")
@click.option("--force", is_flag=True, help="With --resume: even if the run looks live.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@train_options
@runs_dir_option
@ddp_timeout_option
@db_option
@click.argument("more_datasets", nargs=-1, type=str, required=False)
def train(dataset, datasets, name, resume, force, quiet, runs_dir, ddp_timeout, db,
          more_datasets, **flags) -> None:
    """Train on HLBD data (the bundled dataset if none is given) and record the run.

    Under torchrun the processes train one run together (DDP); rank 0 records it.

    The real HLBD files are in ../shared/data beside the checkout (run from the checkout).

    Example: hlbd train --datasets ../shared/data/HLBD_Hardcore_Full.json
    ../shared/data/HLBD_Full_V2.json --epochs 3 --name both
    """
    from hlbd import runner

    given = {k: v for k, v in flags.items() if v is not None}
    paths = [*dataset, *datasets, *more_datasets]
    config = None
    if name_problem(name):
        raise HlbdError(name_problem(name))
    if not resume:
        config = TrainConfig(**given, name=name)
        if paths:
            config.datasets = paths
        runner.check_config(config)  # before the database is even opened
    else:
        check_overrides(given)

    def lead(place, should_stop) -> runner.RunOutcome:
        if not resume and int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0) > 0:
            raise HlbdError("torchrun restarted the training processes (--max-restarts): "
                            "`hlbd train` would start a second run; to continue the first, "
                            "give torchrun `-m hlbd resume --run-id ID` instead")
        store = Store.open(db)
        common = {"on_run_id": _print_run_id, "should_stop": should_stop,
                  "progress": not quiet, "place": place}
        if resume:
            if paths:
                given["datasets"] = paths
            return runner.resume_checkpoint(store, resume, epochs=given.pop("epochs", None),
                                            overrides=given, force=force, name=name,
                                            runs_root=runner.runs_dir(runs_dir), **common)
        return runner.start_run(config, store, runs_root=runner.runs_dir(runs_dir), **common)

    run_as_rank(ddp_timeout, lead)


@click.command()
@click.option("--run-id", required=True, help="The run's id, or a unique prefix of it.")
@click.option("--epochs", type=int, default=None, help="The new total number of epochs.")
@click.option("--force", is_flag=True, help="Resume even if the run looks live.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@resume_options
@ddp_timeout_option
@db_option
def resume(run_id, epochs, force, quiet, ddp_timeout, db, **flags) -> None:
    """Continue a run from its newest checkpoint; epochs append to the same run.

    Model, optimizer, LR schedule, AMP scaler, random state and data order continue
    exactly (under torchrun: at the same number of processes; at another, the global
    batch is the same and the numbers equal to float tolerance); epochs recorded after
    that checkpoint are kept, marked superseded.

    Example: hlbd resume --run-id 3f2a --epochs 10
    """
    check_overrides(flags)  # before the database is even opened
    from hlbd import runner

    def lead(place, should_stop) -> runner.RunOutcome:
        store = Store.open(db)
        return runner.resume_run(store, run_id, epochs=epochs, force=force,
                                 overrides={k: v for k, v in flags.items() if v is not None},
                                 on_run_id=_print_run_id, should_stop=should_stop,
                                 progress=not quiet, place=place)

    run_as_rank(ddp_timeout, lead)


COMMANDS = [train, resume]
