"""Shared fixtures: real SQLite files and real tiny training runs."""

from __future__ import annotations

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
