"""One query cannot eat the machine: `hlbd sql` and the explorer's SQL page bound memory
(SQLite's value length and heap, the rows fetched) as well as time. Memory is measured:
the peak resident size of each `hlbd sql` process, against `SELECT 1` in the same test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from helpers.explorer import open_app
from helpers.procs import env

from hlbd.store import Store

MB = 2**20
ROWS_1GB = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000) "
            "SELECT x, randomblob(10000) FROM c")
COLUMNS_1GB = "SELECT " + ", ".join(["randomblob(50000000)"] * 20)


def sql_measured(db, query: str, *flags: str) -> tuple[int, str, int]:
    """Run `hlbd sql` as a process; (exit status, stderr, its peak resident bytes), the
    peak from wait4 on that one child."""
    proc = subprocess.Popen([sys.executable, "-m", "hlbd", "sql", query, "--db", str(db),
                             *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env(), start_new_session=True)
    watchdog = threading.Timer(120, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        err = proc.stderr.read()  # until it exits and its stderr closes
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err.decode(), usage.ru_maxrss * 1024


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("sqlmem") / "runs.db"
    Store.open(str(path)).close()
    return path


def test_a_huge_value_is_refused_at_once_without_taking_memory(db):
    _, _, baseline = sql_measured(db, "SELECT 1")
    code, err, peak = sql_measured(db, "SELECT randomblob(800000000)", "--time-limit", "1")
    assert code == 1
    assert err.strip() == ("Error: query stopped: a value would be larger than 128 MB (a "
                           "quarter of the memory limit) (string or blob too big)")
    assert peak - baseline < 64 * MB, (peak, baseline)


@pytest.mark.parametrize("query", [COLUMNS_1GB, ROWS_1GB], ids=["wide row", "many rows"])
def test_a_query_that_needs_a_gigabyte_stops_at_the_memory_limit(db, query):
    _, _, baseline = sql_measured(db, "SELECT 1")
    code, err, peak = sql_measured(db, query, "--memory-limit", "200", "--time-limit", "60")
    assert code == 1
    assert err.startswith("Error: query stopped: ") and "200 MB memory limit" in err, err
    # Bounded by the limit (plus what Python holds for the rows), not by the 1 GB asked.
    assert peak - baseline < 400 * MB, (peak - baseline) / MB


def test_the_explorers_sql_page_stops_a_huge_value_with_a_message(db, monkeypatch):
    at = open_app(monkeypatch, db)
    at.switch_page("views/sql.py").run()
    at.text_area[0].set_value("SELECT randomblob(800000000)")
    at.button[0].click().run()
    assert not at.exception
    assert "query stopped: a value would be larger than 128 MB" in at.error[0].value
