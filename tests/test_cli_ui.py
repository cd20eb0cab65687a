"""`hlbd ui` starts the explorer on the database the other commands use."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from click.testing import CliRunner
from helpers.explorer import APP, streamlit_flags, wait_until_serving
from helpers.procs import free_port

from hlbd.cli import main
from hlbd.cli.ui import LOCAL
from hlbd.store import Store, connect

REPO = Path(__file__).resolve().parents[1]


def test_hlbd_ui_serves_the_explorer_with_hlbd_db_set_to_the_database(tmp_path):
    db = tmp_path / "ui.db"
    Store.open(str(db)).close()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hlbd", "ui", "--db", str(db),
                               *streamlit_flags(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(port, server)
        # `hlbd ui` became the streamlit process (exec): same pid, the app, our database.
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        # Serving, no browser has opened a page: the pages' libraries are loaded already
        # (their compiled parts are mapped into the process), not by the first page.
        mapped = Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert f"HLBD_DB={connect.resolve_db_url(str(db))}".encode() in environ
    assert str(APP).encode() in cmdline and b"run" in cmdline
    assert "/pandas/_libs/" in mapped and "/pyarrow/" in mapped and "/sqlalchemy/" in mapped


def test_hlbd_ui_help_ends_with_an_example():
    result = CliRunner().invoke(main, ["ui", "--help"])
    assert result.exit_code == 0
    assert "Example: hlbd ui" in result.output


def test_hlbd_ui_passes_every_setting_of_the_projects_streamlit_config():
    # .streamlit/config.toml is read only when streamlit starts in the project folder;
    # hlbd ui, started anywhere, passes the same settings as flags.
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    settings = {f"--{section}.{key}": str(value).lower() if isinstance(value, bool) else value
                for section, values in config.items() for key, value in values.items()}
    flags = dict(zip(LOCAL[::2], LOCAL[1::2]))
    assert flags == settings
