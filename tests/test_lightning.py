"""HlbdLogger and its callback: a real Lightning Trainer fitting a tiny module records into
a real store; each recorded value is held to what Lightning and the module computed."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from helpers.torchrun import run_script
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.utilities import grad_norm
from torch.utils.data import DataLoader, TensorDataset

from hlbd.integrations.lightning import HlbdLogger
from hlbd.store import Store


class Tiny(L.LightningModule):
    """A 2-layer regression with two parameter groups and a per-step LR schedule; it
    keeps what it computed itself: each micro-batch's loss, and per optimizer step
    Lightning's own grad_norm (before clipping) and each group's LR."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1))
        self.fail_at = fail_at
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.lrs: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError(f"diverged at step {self.fail_at}")
        self.losses.append(loss.item())
        self.log("train_mse", loss, on_step=True, on_epoch=True)
        return loss

    def on_before_optimizer_step(self, optimizer):
        self.norms.append(grad_norm(self, norm_type=2)["grad_2.0_norm_total"].item())
        self.lrs.append([g["lr"] for g in optimizer.param_groups])

    def configure_optimizers(self):
        first, second = self.net[0], self.net[2]
        opt = torch.optim.SGD([{"params": first.parameters(), "lr": 0.2},
                               {"params": second.parameters(), "lr": 0.05}])
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def data() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(48, 4, generator=generator)
    y = (x.sum(1, keepdim=True) * 3).pow(2)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def trainer(logger, tmp_path, epochs=2, **kw) -> L.Trainer:
    return L.Trainer(logger=logger, callbacks=[logger.callback(), *kw.pop("callbacks", [])],
                     max_epochs=epochs, accelerator="cpu", devices=1,
                     accumulate_grad_batches=2, gradient_clip_val=0.5,
                     log_every_n_steps=1, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def read(db_url: str, run_id: str):
    store = Store.open_read_only(db_url)
    try:
        return (store.get_run(run_id), store.steps(run_id), store.epochs(run_id),
                store.points(run_id), store.segments(run_id))
    finally:
        store.close()


def test_each_step_is_the_modules_loss_and_lightnings_pre_clip_norm_and_lr(db_url,
                                                                         tmp_path):
    logger = HlbdLogger("tiny", db=db_url, runs_dir=str(tmp_path / "runs"))
    module = Tiny()
    trainer(logger, tmp_path, enable_checkpointing=False).fit(module, data())
    run, steps, epochs, points, _ = read(db_url, logger.version)

    assert run["status"] == "finished" and run["name"] == "tiny"
    assert run["config"]["lightning"]["gradient_clip_val"] == 0.5
    assert len(steps) == len(module.norms) == 6  # 6 batches an epoch, 2 per step
    for n, row in enumerate(steps):
        assert row["loss"] == pytest.approx(sum(module.losses[2 * n:2 * n + 2]) / 2,
                                            rel=1e-6)
        assert row["grad_norm"] == pytest.approx(module.norms[n], rel=1e-5)
        assert row["lr"] == module.lrs[n][0]
    by_key = {}
    for p in points:
        by_key.setdefault((p["key"], p["scope"]), {})[p["step"]] = p["value"]
    assert by_key["lr/1", "step"] == {n + 1: lrs[1] for n, lrs in enumerate(module.lrs)}
    assert len(set(by_key["lr/1", "step"].values())) == 6  # moved every step
    assert by_key["clipped", "step"] == {s["step"]: float(s["grad_norm"] > 0.5)
                                         for s in steps}
    assert 1.0 in by_key["clipped", "step"].values()  # the norms do exceed 0.5
    # What the module self.log'ged, at its steps; its epoch mean as the epoch's value.
    assert set(by_key["train_mse_step", "step"]) <= {s["step"] for s in steps}
    assert set(by_key["train_mse_epoch", "epoch"]) == {3, 6}
    assert [(e["epoch"], e["steps"]) for e in epochs] == [(1, 3), (2, 3)]


def test_fit_from_a_checkpoint_continues_the_same_run(db_url, tmp_path):
    runs = str(tmp_path / "runs")
    whole = HlbdLogger(db=db_url, runs_dir=runs)
    trainer(whole, tmp_path / "a", epochs=3, enable_checkpointing=False).fit(Tiny(), data())
    cut = HlbdLogger(db=db_url, runs_dir=runs)
    saved = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer(cut, tmp_path / "b", epochs=3, callbacks=[saved]).fit(Tiny(), data())
    saved_first = next(p for p in (tmp_path / "ckpt").iterdir() if "epoch=0" in p.name)
    first = tmp_path / "moved.ckpt"  # resumed from a copy elsewhere: the file says the run
    first.write_bytes(saved_first.read_bytes())

    again = HlbdLogger(db=db_url, runs_dir=runs)
    trainer(again, tmp_path / "b", epochs=3).fit(Tiny(), data(), ckpt_path=str(first))
    assert again.version == cut.version and again.run.segment == 2
    assert (again.run.resumed_from.epoch, again.run.resumed_from.step) == (1, 3)
    _, steps, epochs, _, _ = read(db_url, cut.version)
    _, whole_steps, whole_epochs, _, _ = read(db_url, whole.version)
    assert [(s["step"], s["segment"]) for s in steps] == [
        *[(n, 1) for n in range(1, 4)], *[(n, 2) for n in range(4, 10)]]
    for mine, theirs in zip(steps, whole_steps, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6)
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5)
        assert mine["lr"] == pytest.approx(theirs["lr"], rel=1e-12)
    assert [e["loss"] for e in epochs] == pytest.approx([e["loss"] for e in whole_epochs])


def test_an_exception_in_training_ends_the_run_failed(db_url, tmp_path):
    logger = HlbdLogger(db=db_url, runs_dir=str(tmp_path / "runs"))
    with pytest.raises(RuntimeError, match="diverged at step 2"):
        trainer(logger, tmp_path, enable_checkpointing=False).fit(Tiny(fail_at=2), data())
    run, steps, *_ = read(db_url, logger.version)
    assert run["status"] == "failed"
    assert run["error"] == "RuntimeError: diverged at step 2"
    assert [s["step"] for s in steps] == [1, 2]


class Validated(Tiny):
    """Tiny with a validation set; it keeps each validation's mean loss as it computed it
    (the sanity check's aside)."""

    def __init__(self):
        super().__init__()
        self.val_losses: list[float] = []
        self._batch_losses: list[torch.Tensor] = []

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self._batch_losses.append(loss.detach())
        self.log("val_loss", loss)  # Lightning's default in validation: the epoch mean
        return loss

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.val_losses.append(torch.stack(self._batch_losses).mean().item())
        self._batch_losses = []


def test_validation_as_an_epoch_ends_is_that_epochs_value(db_url, tmp_path):
    logger = HlbdLogger(db=db_url, runs_dir=str(tmp_path / "runs"))
    module = Validated()
    trainer(logger, tmp_path, epochs=3, enable_checkpointing=False).fit(
        module, data(), val_dataloaders=data())
    store = Store.open_read_only(db_url)
    try:
        values = store.epoch_values(logger.version, "val_loss")
        points = [p for p in store.points(logger.version) if p["key"] == "val_loss"]
        [summary] = [r for r in store.list_runs() if r["run_id"] == logger.version]
    finally:
        store.close()
    # One value per epoch, at the step the epoch closed, equal to the module's own mean
    # (every batch is 8 pairs); none left at a step.
    assert [(p["scope"], p["step"]) for p in points] == [("epoch", 3), ("epoch", 6),
                                                         ("epoch", 9)]
    assert [p["value"] for p in points] == pytest.approx(module.val_losses, rel=1e-6)
    assert len(module.val_losses) == 3
    assert summary["best_val_loss"] == pytest.approx(min(module.val_losses), rel=1e-6)
    assert list(values.values()) == [p["value"] for p in points]  # what runs/overfit read


class Overflowing(Tiny):
    """Tiny, whose gradient is Inf on the optimizer steps Lightning attempts at the
    ``global_step`` values in ``inf_at`` (as an fp16 overflow makes it); it keeps, per
    attempt, whether the step changed the weights (``stepped``)."""

    def __init__(self, inf_at: set[int]):
        super().__init__()
        self.inf_at = inf_at
        self.stepped: list[bool] = []

    def on_after_backward(self):
        if self.global_step in self.inf_at:
            self.net[0].weight.grad[0, 0] = math.inf

    def optimizer_step(self, *args, **kwargs):
        before = [p.detach().clone() for p in self.parameters()]
        super().optimizer_step(*args, **kwargs)
        self.stepped.append(any(not torch.equal(b, p)
                                for b, p in zip(before, self.parameters(), strict=True)))


def test_a_step_the_amp_scaler_skipped_is_not_a_step(db_url, tmp_path):
    logger = HlbdLogger(db=db_url, runs_dir=str(tmp_path / "runs"))
    # Attempt 1 mid-epoch 1, attempt 5 the last of epoch 2 (3 attempts an epoch).
    module = Overflowing(inf_at={1, 5})
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    trainer(logger, tmp_path, enable_checkpointing=False,
            plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)]).fit(module, data())
    run, steps, epochs, points, _ = read(db_url, logger.version)

    assert run["status"] == "finished"
    # The scaler skipped the attempts with an Inf gradient: their weights did not move.
    assert module.stepped == [n not in module.inf_at for n in range(6)]
    ran = [n for n, stepped in enumerate(module.stepped) if stepped]
    assert [s["step"] for s in steps] == list(range(1, len(ran) + 1))
    for row, n in zip(steps, ran, strict=True):
        assert row["loss"] == pytest.approx(sum(module.losses[2 * n:2 * n + 2]) / 2,
                                            rel=1e-6)
        assert row["grad_norm"] == pytest.approx(module.norms[n], rel=1e-5)
        assert row["lr"] == module.lrs[n][0]
    assert [(e["epoch"], e["steps"], e["skipped_steps"]) for e in epochs] == [
        (1, 2, 1), (2, 2, 1)]
    # Each skipped attempt's own loss and norm, at the step it was to be, apart.
    attempts = {(p["key"], p["step"]): p["value"] for p in points if p["scope"] == "skipped"}
    for n in sorted(module.inf_at):
        was_to_be = sum(module.stepped[:n]) + 1
        assert not math.isfinite(module.norms[n])
        assert not math.isfinite(attempts["grad_norm", was_to_be])
        assert attempts["loss", was_to_be] == pytest.approx(
            sum(module.losses[2 * n:2 * n + 2]) / 2, rel=1e-6)
    assert {p["step"]: p["value"] for p in points if p["key"] == "skipped"} == {2: 1.0}


DDP = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[3])
    import lightning.pytorch as L
    from test_lightning import Tiny, data
    from hlbd.integrations.lightning import HlbdLogger

    logger = HlbdLogger("ddp", db=sys.argv[1], runs_dir=sys.argv[2])
    module = Tiny()
    trainer = L.Trainer(logger=logger, callbacks=[logger.callback()], max_epochs=2,
                        accelerator="cpu", devices=2, strategy="ddp",
                        accumulate_grad_batches=2, gradient_clip_val=0.5,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=sys.argv[2])
    trainer.fit(module, data())
    with open(os.path.join(sys.argv[2], f"rank{trainer.global_rank}.json"), "w") as out:
        json.dump({"run_id": logger.run.id, "norms": module.norms, "lrs": module.lrs,
                   "losses": module.losses}, out)
""")


def test_ddp_on_two_processes_is_one_run(db_url, tmp_path):
    _, ranks = run_script(DDP, tmp_path, db_url, str(tmp_path), str(Path(__file__).parent))
    assert ranks[0]["run_id"] == ranks[1]["run_id"]
    store = Store.open_read_only(db_url)
    try:
        runs = store.list_runs()
        steps = store.steps(ranks[0]["run_id"])
    finally:
        store.close()
    assert [(r["run_id"], r["status"]) for r in runs] == [(ranks[0]["run_id"], "finished")]
    # 48 examples, 24 a rank: 3 batches of 8 an epoch, 2 a step: 2 steps an epoch.
    assert [s["step"] for s in steps] == list(range(1, len(ranks[0]["norms"]) + 1))
    for row, mine, theirs in zip(steps, ranks[0]["norms"], ranks[1]["norms"], strict=True):
        assert row["grad_norm"] == pytest.approx(mine, rel=1e-5)
        assert mine == pytest.approx(theirs, rel=1e-6)  # reduced over ranks: one norm
    assert [s["lr"] for s in steps] == [lrs[0] for lrs in ranks[0]["lrs"]]
    # The loss: each rank's step loss (its micro-batch losses, each divided by the 2
    # batches accumulated; an epoch's last step has one), averaged over the ranks, as
    # DDP averages their gradients.
    def step_losses(losses: list[float]) -> list[float]:
        groups = [group for epoch in range(0, len(losses), 3)
                  for group in (losses[epoch:epoch + 2], losses[epoch + 2:epoch + 3])]
        return [sum(group) / 2 for group in groups]

    zero, one = (step_losses(r["losses"]) for r in ranks)
    assert len(zero) == len(steps)
    for row, mine, theirs in zip(steps, zero, one, strict=True):
        assert row["loss"] == pytest.approx((mine + theirs) / 2, rel=1e-6)
        assert mine != pytest.approx(theirs, rel=1e-3)  # each rank had its own share
