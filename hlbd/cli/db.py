"""``hlbd db upgrade`` and ``hlbd db current``: the schema, through Alembic."""

from __future__ import annotations

import click

from hlbd.cli.options import db_option
from hlbd.store import connect, schema


@click.group()
def db() -> None:
    """The run database's schema."""


@db.command()
@db_option
def upgrade(db: str | None) -> None:
    """Migrate the database to the newest schema (creating it if it does not exist).

    Example: hlbd db upgrade --db runs.db
    """
    url = connect.resolve_db_url(db)
    revision = schema.upgrade(connect.write_engine(url), url)
    click.echo(f"{url}: at revision {revision} (head)")


@db.command()
@db_option
def current(db: str | None) -> None:
    """Print the database's schema revision and the newest this hlbd knows.

    Example: hlbd db current
    """
    url = connect.resolve_db_url(db)
    engine = connect.read_engine(url)  # creates nothing; refuses a missing file
    try:
        revision = schema.current_revision(engine, url)
    finally:
        engine.dispose()
    click.echo(f"{url}: revision {revision or 'none (empty database)'}; "
               f"head {schema.head_revision()}")


COMMANDS = [db]
