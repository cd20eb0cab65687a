"""``hlbd copy``: runs from one store to another."""

from __future__ import annotations

import click

from hlbd.store.copy import copy_runs


@click.command("copy")
@click.argument("src")
@click.argument("dst")
@click.argument("run_ids", nargs=-1)
def copy_(src: str, dst: str, run_ids: tuple[str, ...]) -> None:
    """Copy runs from the database SRC to DST (each a SQLite file or a SQLAlchemy URL).

    Every row of a run travels (segments, epochs, steps, superseded rows, checkpoint
    rows, anomalies), one transaction per run; checkpoint files stay where they are.
    Without RUN_IDs, every run. Copying again brings only what is new; a run that DST
    holds with a different history is refused, not merged. Prints what it did per run;
    exit status 1 when a run was refused.

    Example: hlbd copy ./hlbd.db postgresql+psycopg://me@db-host/hlbd
    """
    outcomes = copy_runs(src, dst, list(run_ids) or None)
    for outcome in outcomes:
        click.echo(outcome.describe())
    refused = [o for o in outcomes if o.outcome == "refused"]
    if refused:
        raise click.ClickException(f"{len(refused)} of {len(outcomes)} run(s) refused")
    if not outcomes:
        click.echo(f"no runs in {src}", err=True)


COMMANDS = [copy_]
