"""``hlbd ui``: open the Streamlit explorer on the same database as the other commands."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import click

from hlbd import database
from hlbd.cli.options import db_option
from hlbd.errors import HlbdError

# The explorer ships inside the package (hlbd.app: app/ of a checkout).
APP_PACKAGE = "hlbd.app"
# What .streamlit/config.toml sets, for when hlbd ui runs from another folder (flags
# given after `hlbd ui` win): no usage statistics, no external-IP lookup, local only,
# no reloading of installed code.
LOCAL = ("--browser.gatherUsageStats", "false", "--server.address", "localhost",
         "--server.headless", "true", "--server.fileWatcherType", "none",
         "--server.runOnSave", "false", "--client.toolbarMode", "viewer")


def app_script() -> Path:
    """The explorer's page script, found with importlib.resources: app/main.py of a
    checkout, or its copy inside an installed hlbd."""
    try:
        folder = resources.files(APP_PACKAGE)
    except ModuleNotFoundError:  # hlbd on sys.path by hand, never installed
        raise HlbdError(f"the explorer ({APP_PACKAGE}) is not installed; install hlbd with "
                        "pip (in a checkout: pip install -e .)") from None
    # Streamlit runs a file and imports its siblings from that folder: a real one (pip
    # installs hlbd unpacked); a zipped hlbd is refused rather than extracted.
    if not isinstance(folder, Path) or not (folder / "main.py").is_file():
        raise HlbdError(f"the explorer is not a folder with main.py at {folder} (a broken "
                        "or zipped install); reinstall hlbd with pip")
    return folder / "main.py"


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
    env = {**os.environ, "HLBD_DB": database.resolve_db_url(db)}
    argv = [sys.executable, "-m", "streamlit", "run", str(app), *LOCAL, *streamlit_args]
    os.execve(sys.executable, argv, env)


COMMANDS = [ui]
