"""``hlbd ui``: open the Streamlit explorer on the same database as the other commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from hlbd import database
from hlbd.cli.options import db_option
from hlbd.errors import HlbdError

APP = Path(__file__).resolve().parents[2] / "app" / "main.py"
# What .streamlit/config.toml sets, for when hlbd ui runs from another folder (flags
# given after `hlbd ui` win): no usage statistics, no external-IP lookup, local only.
LOCAL = ("--browser.gatherUsageStats", "false", "--server.address", "localhost",
         "--server.headless", "true", "--client.toolbarMode", "viewer")


@click.command(context_settings={"ignore_unknown_options": True})
@db_option
@click.argument("streamlit_args", nargs=-1, type=click.UNPROCESSED)
def ui(db: str | None, streamlit_args: tuple[str, ...]) -> None:
    """Open the explorer: compare runs, flag anomalies, query with SQL (read-only).

    Runs `streamlit run app/main.py` with HLBD_DB set to the database; further
    arguments go to streamlit (e.g. --server.port 8502).

    Example: hlbd ui --db runs.db --server.port 8502
    """
    if not APP.is_file():
        raise HlbdError(f"the explorer is not at {APP}; install hlbd from its source tree "
                        "(pip install -e .) to use `hlbd ui`")
    env = {**os.environ, "HLBD_DB": database.resolve_db_url(db)}
    argv = [sys.executable, "-m", "streamlit", "run", str(APP), *LOCAL, *streamlit_args]
    os.execve(sys.executable, argv, env)


COMMANDS = [ui]
