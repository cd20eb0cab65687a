"""``hlbd ui``: open the Streamlit explorer on the same database as the other commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from hlbd.cli.options import db_option
from hlbd.fileio import installed_folder
from hlbd.store import connect

# The explorer ships inside the package (hlbd.app: app/ of a checkout).
APP_PACKAGE = "hlbd.app"
# What .streamlit/config.toml sets, for when hlbd ui runs from another folder (flags
# given after `hlbd ui` win): no usage statistics, no external-IP lookup, local only,
# no reloading of installed code, no full garbage collection after each rerun.
LOCAL = ("--browser.gatherUsageStats", "false", "--server.address", "localhost",
         "--server.headless", "true", "--server.fileWatcherType", "none",
         "--server.runOnSave", "false", "--client.toolbarMode", "viewer",
         "--runner.postScriptGC", "false")


def app_script() -> Path:
    """The explorer's page script: app/main.py of a checkout, or its installed copy."""
    return installed_folder(APP_PACKAGE, "main.py", "the explorer") / "main.py"


@click.command(context_settings={"ignore_unknown_options": True})
@db_option
@click.argument("streamlit_args", nargs=-1, type=click.UNPROCESSED)
def ui(db: str | None, streamlit_args: tuple[str, ...]) -> None:
    """Open the explorer: compare runs, flag anomalies, query with SQL (read-only).

    Runs `streamlit run app/main.py` (the copy installed with hlbd) with HLBD_DB set to
    the database, local only; further arguments go to streamlit (e.g. --server.port 8502).

    Example: hlbd ui --db runs.db --server.port 8502
    """
    app = app_script()
    env = {**os.environ, "HLBD_DB": connect.resolve_db_url(db)}
    # streamlit run, the explorer's libraries imported before it serves (ui_server.py).
    argv = [sys.executable, "-m", "hlbd.cli.ui_server", "run", str(app), *LOCAL,
            *streamlit_args]
    os.execve(sys.executable, argv, env)


COMMANDS = [ui]
