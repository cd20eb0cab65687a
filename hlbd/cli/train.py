"""``hlbd train`` and ``hlbd resume``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from hlbd.cli.options import db_option
from hlbd.cli.process import refuse_torchrun_restart, run_as_rank
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
     ("Keep the newest N checkpoint files and the best (lowest val_loss); 0: all. Older "
      "ones go once a newer one is saved.")),
    ("--d-model", "d_model", int, "Model width."),
    ("--n-layers", "n_layers", int, "Transformer layers."),
    ("--n-heads", "n_heads", int, "Attention heads."),
    ("--d-ff", "d_ff", int, "Feed-forward width."),
    ("--max-seq-len", "max_seq_len", int, "Longest sequence; longer ones are truncated."),
    ("--dropout", "dropout", float, "Dropout rate."),
    ("--device", "device", str, "auto, cpu, cuda, cuda:1, ..."),
    ("--step-flush-interval", "step_flush_interval", int,
     "Write per-step rows every N optimizer steps (and at each epoch end)."),
    ("--val-fraction", "val_fraction", float,
     "Hold out this fraction of each module (by the seed) to evaluate on; 0: none."),
    ("--val-dataset", "val_dataset", str,
     "Evaluate on this HLBD file instead of a held-out fraction of the training data."),
    ("--eval-every", "eval_every", int,
     "Evaluate on the held-out pairs every N epochs (and after the last)."),
    ("--eval-max-pairs", "eval_max_pairs", int,
     ("Held-out pairs answered by greedy decoding for exact match (0: none); the loss "
      "and token accuracy use them all.")),
]
# Defaults --help shows where the field's own default says little.
SHOWN = {"val_fraction": "0.1 with 50 pairs or more, else 0", "val_dataset": "none"}


def train_options(func, fields: Sequence[str] | None = None, default: str | None = None):
    """TRAIN_FLAGS (or those of ``fields``) as options; unset ones are None."""
    for flag, field, kind, help_text in reversed(TRAIN_FLAGS):
        if fields is None or field in fields:
            shown = default or SHOWN.get(field) or getattr(DEFAULTS, field)
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


def _print_run_id(run_id: str) -> None:
    sys.stdout.write(f"run_id: {run_id}\n")
    sys.stdout.flush()


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

    def lead(ranks, should_stop) -> runner.RunOutcome:
        if not resume:
            refuse_torchrun_restart()
        store = Store.open(db)
        common = {"on_run_id": _print_run_id, "should_stop": should_stop,
                  "progress": not quiet, "ranks": ranks}
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

    def lead(ranks, should_stop) -> runner.RunOutcome:
        store = Store.open(db)
        return runner.resume_run(store, run_id, epochs=epochs, force=force,
                                 overrides={k: v for k, v in flags.items() if v is not None},
                                 on_run_id=_print_run_id, should_stop=should_stop,
                                 progress=not quiet, ranks=ranks)

    run_as_rank(ddp_timeout, lead)


COMMANDS = [train, resume]
