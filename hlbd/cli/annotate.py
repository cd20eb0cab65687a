"""``hlbd tag`` and ``hlbd note``: what a person says of a run, at any time."""

from __future__ import annotations

import click

from hlbd.cli.options import db_option, printable
from hlbd.errors import HlbdError
from hlbd.store import Store


@click.command()
@click.argument("run_id")
@click.argument("tags", nargs=-1)
@click.option("--remove", "removed", multiple=True, help="A tag to take off (repeatable).")
@db_option
def tag(run_id: str, tags: tuple[str, ...], removed: tuple[str, ...], db: str | None) -> None:
    """Add TAGS to a run (and take --remove ones off); prints its tags. The explorer
    filters, groups and colours runs by them.

    Example: hlbd tag 3f2a baseline lr-sweep --remove draft
    """
    if not tags and not removed:
        raise HlbdError("give tags to add, or --remove TAG")
    store = Store.open(db)
    run_id = store.resolve_run_id(run_id)
    now = store.tag(run_id, tags, removed)
    click.echo(f"{run_id}: {', '.join(printable(t) for t in now) or 'no tags'}")


@click.command()
@click.argument("run_id")
@click.argument("text")
@db_option
def note(run_id: str, text: str, db: str | None) -> None:
    """Set a run's notes to TEXT ("" clears them); `hlbd show` and the explorer show them.

    Example: hlbd note 3f2a "diverged after the restart at epoch 31; lr too high"
    """
    store = Store.open(db)
    run_id = store.resolve_run_id(run_id)
    store.note(run_id, text)
    click.echo(f"{run_id}: {'notes set' if text else 'notes cleared'}")


COMMANDS = [tag, note]
