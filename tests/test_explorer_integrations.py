"""The explorer draws a transformers Trainer run and a Lightning run next to an hlbd train
run on one chart: each run's points are the steps it recorded."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from helpers import hf
from helpers.backends import sqlite_only
from helpers.explorer import charts, compare, open_app
from helpers.tiny import tiny_config
from torch.utils.data import DataLoader, TensorDataset

from hlbd.integrations.lightning import HlbdLogger
from hlbd.integrations.transformers import HlbdCallback
from hlbd.runner import start_run
from hlbd.store import Store


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


@sqlite_only
def test_trainer_and_lightning_runs_are_drawn_beside_an_hlbd_train_run(
        backend, databases, tmp_path, monkeypatch):
    db = databases.new(tmp_path)
    store = Store.open(db)
    ours = start_run(tiny_config(epochs=2), store, runs_root=tmp_path / "runs",
                     progress=False).run_id
    callback = HlbdCallback("gpt2", db=db, runs_dir=str(tmp_path / "runs"))
    hf.trainer(tmp_path / "hf", [callback], epochs=1).train()
    logger = HlbdLogger("lightning", db=db, runs_dir=str(tmp_path / "runs"))
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    L.Trainer(logger=logger, callbacks=[logger.callback()], max_epochs=2,
              accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, default_root_dir=str(tmp_path)).fit(
        Regression(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
    picked = [ours, callback.run.id, logger.version]

    drawn = charts(compare(open_app(monkeypatch, db), picked, x_axis="step"))
    for title, series in [("Loss", "loss"), ("Gradient norm", "grad_norm")]:
        assert title in drawn, list(drawn)
        points = drawn[title].points
        for run_id in picked:
            run = store.get_run(run_id)
            mine = points[points["run"] == f"{run['name']} · {run_id[:8]}"].sort_values("x")
            steps = store.steps(run_id)
            assert len(steps) > 0
            assert mine["x"].tolist() == [s["step"] for s in steps]
            assert mine["value"].tolist() == pytest.approx([s[series] for s in steps])

    # The names a run logged of its own are charts too: the Trainer's second parameter
    # group's LR per step, and its evaluation as each epoch closed.
    at = compare(open_app(monkeypatch, db), picked, x_axis="step")
    at.button_group(key="metrics").set_value(["loss", "p:lr/1", "p:eval/loss"]).run()
    drawn = charts(at)
    assert list(drawn) == ["Loss", "eval/loss", "lr/1"]
    hf_label = f"gpt2 · {callback.run.id[:8]}"
    lr1 = drawn["lr/1"].points
    recorded = [(p["step"], p["value"]) for p in store.points(callback.run.id, "lr/1")]
    assert list(zip(lr1[lr1["run"] == hf_label]["x"], lr1[lr1["run"] == hf_label]["value"])
                ) == recorded
    light = f"lightning · {logger.version[:8]}"
    assert set(lr1["run"]) == {hf_label}  # Lightning's one group has no lr/1
    assert "not recorded" in drawn["lr/1"].subtitle and light in drawn["lr/1"].subtitle
    evals = drawn["eval/loss"].points
    assert list(zip(evals["x"], evals["value"])) == [
        (p["step"], p["value"]) for p in store.points(callback.run.id, "eval/loss")]
    # On the epoch axis, an epoch's step values are drawn as their mean, min and max.
    at.button_group(key="x_axis").set_value("epoch").run()
    lr1 = charts(at)["lr/1"].points
    values = [v for _, v in recorded]
    assert lr1["value"].tolist() == pytest.approx([sum(values) / len(values)])
    assert (lr1["lo"].iloc[0], lr1["hi"].iloc[0]) == (min(values), max(values))
    store.close()
