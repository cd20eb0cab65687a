"""Shared fixtures: real SQLite files and real tiny training runs."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from hlbd.config import TrainConfig
from hlbd.runner import start_run
from hlbd.store import Store


def tiny_config(**overrides) -> TrainConfig:
    """A model small enough to train an epoch of the bundled data in a fraction of a second."""
    values = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "epochs": 2,
              "batch_size": 16, "dropout": 0.0, "save_interval": 0, "device": "cpu",
              "step_flush_interval": 1000}
    return TrainConfig(**{**values, **overrides})


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store.open(str(tmp_path / "runs.db"))
    yield s
    s.close()


@pytest.fixture
def train_run(store, tmp_path):
    """Train a tiny run into ``store``; returns (run_id, outcome)."""

    def run(**overrides):
        outcome = start_run(tiny_config(**overrides), store, runs_root=tmp_path / "runs",
                            progress=False)
        return outcome.run_id, outcome

    return run


def db_snapshot(path: str | Path) -> dict:
    """What a refused write must not change: database and WAL bytes, every table's row
    count, and the files beside the database."""
    path = Path(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                  for t in tables}
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    return {"db_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "wal_sha256": hashlib.sha256(wal.read_bytes()).hexdigest() if wal.exists()
            else None,
            "counts": counts, "files": sorted(p.name for p in path.parent.iterdir())}
