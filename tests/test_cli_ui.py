"""`hlbd ui` starts the explorer on the database the other commands use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from explorer_helpers import APP, free_port, streamlit_flags, wait_until_serving

from hlbd import database
from hlbd.cli import main
from hlbd.store import Store


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
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert f"HLBD_DB={database.resolve_db_url(str(db))}".encode() in environ
    assert str(APP).encode() in cmdline and b"streamlit" in cmdline


def test_hlbd_ui_help_ends_with_an_example():
    result = CliRunner().invoke(main, ["ui", "--help"])
    assert result.exit_code == 0
    assert "Example: hlbd ui" in result.output
