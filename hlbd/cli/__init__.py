"""The ``hlbd`` command: a few lines per command over the library.

Library errors (HlbdError) become one line on stderr and exit status 1.
"""

from __future__ import annotations

import logging
import sys

import click
from sqlalchemy import exc as sa_exc
from tqdm import tqdm

from hlbd.errors import HlbdError


class HlbdGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HlbdError as exc:
            raise click.ClickException(str(exc)) from None
        except sa_exc.DBAPIError as exc:
            # A database that fails mid-command (corrupt pages, disk full, locked past
            # the busy timeout): one line, not a driver traceback.
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise click.ClickException(f"database error: {reason}") from None


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


@click.group(cls=HlbdGroup)
@click.version_option(package_name="hlbd")
def main() -> None:
    """Train transformers on HLBD datasets and keep an honest record of every run."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("hlbd")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _register() -> None:
    from hlbd.cli import annotate, anomalies, copy, db, evaluate, reports, runs, sql, train, ui

    for module in (train, runs, annotate, db, anomalies, sql, reports, ui, copy, evaluate):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
