"""``hlbd runs`` and ``hlbd show``: the terminal view of the store."""

from __future__ import annotations

import json
import os

import click

from hlbd.cli.options import db_option, printable, table
from hlbd.errors import NoDatabaseError
from hlbd.store import Store, buckets

# Cells cut with an ellipsis past these widths (terminal columns); `hlbd show` and
# `hlbd sql` give the whole value.
RUNS_WIDTHS = {"name": 40, "tags": 30, "datasets": 60}


@click.command()
@db_option
def runs(db: str | None) -> None:
    """List runs, newest first: status, epochs, last and best loss, best held-out loss
    and exact match.

    Example: hlbd runs --db hlbd.db
    """
    try:
        store = Store.open_read_only(db)
    except NoDatabaseError as missing:
        click.echo(f"no runs: {missing}")
        return
    rows = store.list_runs()
    if not rows:
        click.echo(f"no runs in {store.url} yet; start one with `hlbd train`")
        return
    click.echo(table(
        ["run_id", "name", "status", "created (UTC)", "epochs", "last_loss", "best_loss",
         "best_val_loss", "best_exact", "tags", "datasets"],
        [[r["run_id"], r["name"], r["display_status"], r["created_at"].strftime(
            "%Y-%m-%d %H:%M:%S"), r["epochs"], r["last_loss"], r["best_loss"],
          r["best_val_loss"], r["best_exact"], ", ".join(r["tags"]),
          ", ".join(r["dataset_stats"])] for r in rows], max_width=RUNS_WIDTHS))


EPOCH_COLUMNS = ["epoch", "segment", "loss", "grad_norm", "grad_norm_max", "grad_norm_min",
                 "nonfinite_steps", "clipped_steps", "lr", "token_accuracy", "wall_seconds",
                 "tokens_per_second"]


@click.command()
@click.argument("run_id")
@click.option("--all-segments", is_flag=True,
              help="Also show superseded epochs (recorded before a resume replaced them).")
@db_option
def show(run_id: str, all_segments: bool, db: str | None) -> None:
    """Show one run: its facts and the per-epoch table.

    Example: hlbd show 3f2a
    """
    store = Store.open_read_only(db)
    run = store.get_run(run_id)
    # Whole values, each on one line: control characters escaped, nothing cut.
    click.echo(f"run {run['run_id']}  name {printable(run['name'])}  "
               f"status {run['display_status']}")
    click.echo(f"created {run['created_at']:%Y-%m-%d %H:%M:%S} UTC  "
               f"folder {printable(str(run['run_dir']))}")
    click.echo(printable(f"datasets {json.dumps(run['dataset_stats'], ensure_ascii=False)}"))
    if run["tags"]:
        click.echo(f"tags {printable(', '.join(run['tags']))}")
    if run.get("notes"):
        click.echo(f"notes {printable(run['notes'])}")
    if run.get("error"):
        click.echo(f"error {printable(run['error'])}")
    epochs = store.epochs(run["run_id"], include_superseded=all_segments)
    if not epochs:
        span = buckets.step_spans(store.engine, [run["run_id"]]).get(run["run_id"])
        steps = span["steps"] if span else 0  # counted in the rollups, no step read
        click.echo("no epochs recorded" + (f", but {steps} steps (end_epoch() closes an "
                                           "epoch)" if steps else ""))
    else:
        columns = EPOCH_COLUMNS + (["superseded_by"] if all_segments else [])
        click.echo(table(columns, [[e.get(c) for c in columns] for e in epochs]))
    series = store.point_series(run["run_id"])
    if series:
        click.echo("series logged by the loop (the view metric_points has their values)")
        click.echo(table(["key", "scope", "values", "first_step", "last_step"],
                         [[printable(s["key"]), s["scope"], s["values"], s["first_step"],
                           s["last_step"]] for s in series]))
    evaluations = store.evaluations(run["run_id"])
    if evaluations:
        click.echo("evaluations (hlbd eval)")
        click.echo(table(["evaluated (UTC)", "checkpoint epoch", "dataset", "pairs",
                          "answered", "loss", "token_accuracy", "exact", "checkpoint"],
                         [[f"{e['evaluated_at']:%Y-%m-%d %H:%M:%S}", e["checkpoint_epoch"],
                           printable(e["dataset"]), e["pairs"], e["exact_pairs"],
                           e["values"].get("loss"), e["values"].get("token_accuracy"),
                           e["values"].get("exact"), e["checkpoint"]]
                          for e in evaluations]))
    checkpoints = store.checkpoints(run["run_id"])
    if checkpoints:
        click.echo("checkpoints")
        click.echo(table(["epoch", "segment", "created (UTC)", "size_bytes", "file", "path"],
                         [[c["epoch"], c["segment"], f"{c['created_at']:%Y-%m-%d %H:%M:%S}",
                           c["size_bytes"], _file_state(c), c["path"]]
                          for c in checkpoints]))


def _file_state(checkpoint: dict) -> str:
    """``pruned <when>`` (deleted by --keep-checkpoints), ``on disk`` or ``missing`` (a
    file, or a framework's checkpoint folder)."""
    if checkpoint["pruned_at"] is not None:
        return f"pruned {checkpoint['pruned_at']:%Y-%m-%d %H:%M:%S}"
    return "on disk" if os.path.exists(checkpoint["path"]) else "missing"


COMMANDS = [runs, show]
