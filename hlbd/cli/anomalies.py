"""``hlbd anomalies``: the anomaly rules applied to the recorded history."""

from __future__ import annotations

import dataclasses

import click

from hlbd.anomalies import THRESHOLD_HELP, Thresholds, detect, not_checked
from hlbd.cli.options import db_option, table
from hlbd.store import Store

DEFAULTS = Thresholds()


def threshold_options(func):
    for field in reversed(dataclasses.fields(Thresholds)):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(DEFAULTS, field.name)
        func = click.option(flag, field.name, type=type(default), default=default,
                            show_default=True, help=THRESHOLD_HELP.get(field.name))(func)
    return func


@click.command()
@click.argument("run_id", required=False)
@threshold_options
@db_option
def anomalies(run_id: str | None, db: str | None, **thresholds) -> None:
    """Flag explosions, vanishing or non-finite gradients, loss spikes and LR surprises.

    Checks one run, or every run without RUN_ID. Each flag names run, epoch (and step
    where known), rule, value and threshold.

    Example: hlbd anomalies 3f2a --grad-explode 5
    """
    store = Store.open_read_only(db)
    limits = Thresholds(**thresholds)
    run_ids = [store.resolve_run_id(run_id)] if run_id else [r["run_id"]
                                                              for r in store.list_runs()]
    flags, unchecked = [], []
    for rid in run_ids:
        run, epochs = store.get_run(rid), store.epochs(rid)
        val_losses = store.epoch_values(rid, "val_loss")
        flags += detect(run, epochs, store.steps(rid), limits, val_losses=val_losses)
        unchecked += [f"{rid[:12]}: {rule} not checked ({why})"
                      for rule, why in not_checked(run, epochs, val_losses).items()]
    for line in unchecked:
        click.echo(line)
    if not flags:
        click.echo(f"no anomalies in {len(run_ids)} run(s)")
        return
    click.echo(table(["run_id", "epoch", "step", "rule", "value", "threshold", "message"],
                     [[f["run_id"][:12], f["epoch"], f["step"], f["rule"], f["value"],
                       f["threshold"], f["message"]] for f in flags]))


COMMANDS = [anomalies]
