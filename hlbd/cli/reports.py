"""``hlbd import`` and ``hlbd export``: runs in and out as experiment reports."""

from __future__ import annotations

import click

from hlbd import exporter, importer
from hlbd.cli.options import db_option
from hlbd.config import name_problem
from hlbd.errors import HlbdError
from hlbd.store import Store


@click.command("import")
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", default=None,
              help="Name of the imported run; for a folder, runs are named NAME/SUBFOLDER "
                   "[default: the report's folder name].")
@db_option
def import_(path: str, name: str | None, db: str | None) -> None:
    """Import runs recorded by older tools from experiment_report.json files.

    PATH is a report, or a folder: every experiment_report.json under it. All of them
    go in in one transaction, or none does (one bad file refuses the import). What was
    not recorded stays NULL; keys hlbd does not know are kept in the run's extra JSON;
    a file imported before is skipped.

    Example: hlbd import old_run/experiment_report.json --name old-baseline
    """
    if name_problem(name):
        raise HlbdError(name_problem(name))
    store = Store.open(db)
    for outcome in importer.import_reports(store, path, name):
        click.echo(outcome.describe())
        for note in outcome.parsed.notes if outcome.outcome == "imported" else ():
            click.echo(f"  note: {note}", err=True)


@click.command()
@click.argument("run_id")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json",
              show_default=True,
              help="json: the experiment_report.json keys; csv: one row per epoch.")
@db_option
def export(run_id: str, fmt: str, db: str | None) -> None:
    """Write a run's effective history to stdout (superseded epochs left out).

    Example: hlbd export 3f2a --format json > report.json
    """
    store = Store.open_read_only(db)
    if fmt == "csv":
        click.echo(exporter.export_csv(store, run_id), nl=False)
    else:
        click.echo(exporter.export_json(store, run_id))


COMMANDS = [import_, export]
