"""The commands a user types, run as real processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = ["--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--d-ff", "64", "--quiet"]


def hlbd(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hlbd", *args], cwd=cwd, text=True, check=False,
                          capture_output=True, timeout=300)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")
def test_train_runs_show_and_plain_sql_tell_the_same_story(tmp_path):
    hardcore = SHARED_DATA / "HLBD_Hardcore_Full.json"
    result = hlbd("train", "--datasets", str(hardcore), "bundled:hlbd-basics",
                  "--epochs", "2", "--name", "both", "--batch-size", "64", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first_line = result.stdout.splitlines()[0]
    assert first_line.startswith("run_id: ")
    run_id = first_line.removeprefix("run_id: ")
    assert "epoch 2/2" in result.stderr  # the per-epoch summary line

    listing = hlbd("runs", cwd=tmp_path)
    assert listing.returncode == 0
    (row,) = [line for line in listing.stdout.splitlines() if line.startswith(run_id)]
    assert "both" in row and "finished" in row and "HLBD_Hardcore_Full.json" in row

    shown = hlbd("show", run_id[:8], cwd=tmp_path)
    assert shown.returncode == 0
    conn = sqlite3.connect(tmp_path / "hlbd.db")  # the default database file
    rows = conn.execute("SELECT epoch, loss, grad_norm, lr FROM epoch_metrics "
                        "WHERE run_id = ? ORDER BY epoch", (run_id,)).fetchall()
    stats = conn.execute("SELECT dataset_stats FROM runs WHERE run_id = ?",
                         (run_id,)).fetchone()[0]
    assert [r[0] for r in rows] == [1, 2]
    assert all(r[2] is not None and r[3] is not None for r in rows)
    assert '"HLBD_Hardcore_Full.json": 575' in stats and '"bundled:hlbd-basics": 143' in stats
    table_lines = shown.stdout.splitlines()
    for epoch, loss, _, _ in rows:
        assert any(line.split()[:3] == [str(epoch), "1", f"{loss:.6g}"] for line in table_lines)
    assert (tmp_path / "hlbd_runs" / run_id / "experiment_report.json").exists()


def test_empty_database_says_how_to_start(tmp_path):
    result = hlbd("runs", "--db", str(tmp_path / "empty.db"), cwd=tmp_path)
    assert result.returncode == 0
    assert "no runs" in result.stdout and "hlbd train" in result.stdout
