"""Commands that do not train start without torch, Streamlit, pandas or Altair.

Each command runs for real, in a process of its own, on a real store holding a trained
tiny run; ``python -X importtime`` lists every module the process imported.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from helpers.procs import finish
from helpers.tiny import tiny_config

from hlbd.runner import start_run
from hlbd.store import Store

# Imported only by training (torch) and by the explorer (the rest).
HEAVY = {"torch", "streamlit", "pandas", "altair"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str, Path]:
    """(database, run id, the run's report) of a finished tiny run with a checkpoint."""
    folder = tmp_path_factory.mktemp("light")
    db = folder / "runs.db"
    store = Store.open(str(db))
    try:
        outcome = start_run(tiny_config(epochs=1, save_interval=1), store,
                            runs_root=folder / "runs", progress=False)
    finally:
        store.close()
    return db, outcome.run_id, Path(outcome.run_dir) / "experiment_report.json"


def imported_top_level(importtime_log: str) -> set[str]:
    """The top-level packages named in ``python -X importtime`` output."""
    names = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.add(name.split(".")[0])
    return names


def light_commands(db: Path, run_id: str, report: Path, tmp: Path) -> dict[str, list]:
    copy_db = tmp / "copy.db"
    shutil.copyfile(db, copy_db)
    return {
        "--help": ["--help"],
        "runs": ["runs", "--db", db],
        "show": ["show", run_id[:8], "--db", db],
        "sql": ["sql", "SELECT run_id, loss FROM epoch_metrics", "--db", db],
        "anomalies": ["anomalies", "--db", db],
        "anomalies ID": ["anomalies", run_id, "--db", db],
        "export": ["export", run_id, "--db", db],
        "export csv": ["export", run_id, "--format", "csv", "--db", db],
        "db current": ["db", "current", "--db", db],
        "db upgrade": ["db", "upgrade", "--db", copy_db],
        "copy": ["copy", db, tmp / "other.db"],
        "import": ["import", report, "--db", tmp / "imported.db"],
        "train --help": ["train", "--help"],
        "resume --help": ["resume", "--help"],
        "ui --help": ["ui", "--help"],
    }


def test_commands_that_do_not_train_import_neither_torch_nor_streamlit(trained, tmp_path,
                                                                        procs):
    db, run_id, report = trained
    commands = light_commands(db, run_id, report, tmp_path)
    started = {name: procs.start([sys.executable, "-X", "importtime", "-m", "hlbd",
                                  *map(str, argv)], cwd=tmp_path)
               for name, argv in commands.items()}
    heavy, failed, out = {}, {}, {}
    for name, proc in started.items():
        code, out[name], err = finish(proc, timeout=120)
        if code != 0:
            failed[name] = (code, [line for line in err.splitlines()
                                   if not line.startswith("import time:")])
        if HEAVY & imported_top_level(err):
            heavy[name] = sorted(HEAVY & imported_top_level(err))
    assert not failed
    assert not heavy
    # They did their work on the real store, not only started.
    assert run_id in out["runs"] and run_id in out["export"] and run_id in out["sql"]
    assert "copied" in out["copy"] and "imported" in out["import"]
    assert "Example: hlbd ui" in out["ui --help"]


def test_training_does_import_torch_so_the_check_can_fail(tmp_path, procs):
    # The same check on `hlbd train`: the log names torch, so its absence above means
    # something.
    proc = procs.start([sys.executable, "-X", "importtime", "-m", "hlbd", "train",
                        "--db", str(tmp_path / "t.db"), "--epochs", "0"], cwd=tmp_path)
    code, _, err = finish(proc, timeout=120)
    assert code == 1 and "--epochs must be at least 1" in err
    assert "torch" in imported_top_level(err)
