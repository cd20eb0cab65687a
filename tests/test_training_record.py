"""The trainer records real numbers: the grad norm clip_grad_norm_ saw, the scheduler's LR."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sqlalchemy import text

from hlbd.checkpoint import load_checkpoint
from hlbd.config import TrainConfig
from hlbd.data import BUNDLED
from hlbd.model import build_model
from hlbd.report import REPORT_NAME
from hlbd.runner import prepare_data
from hlbd.sequences import IGNORE, Examples, epoch_batches
from hlbd.tokenizer import Tokenizer


def test_stored_grad_norm_is_the_pre_clip_norm_recomputed_by_hand(store, train_run):
    # One optimizer step per epoch (the whole bundled set in one batch), clipping at 0.1.
    run_id, _ = train_run(epochs=1, batch_size=512, max_grad_norm=0.1, seed=3)
    run = store.get_run(run_id)
    config = run["config"]
    tokenizer = Tokenizer(run["vocab"])
    pairs = prepare_data(TrainConfig.from_dict(config)).pairs  # the held-out ones left out
    examples = Examples.encode(pairs, tokenizer, config["max_seq_len"])
    torch.manual_seed(config["seed"])
    model = build_model(len(tokenizer), TrainConfig.from_dict(config))
    (indices,) = epoch_batches(len(examples), config["batch_size"], config["seed"], 1)
    x, y = examples.batch(indices, torch.device("cpu"))
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                           reduction="sum") / (y != IGNORE).sum()
    loss.backward()
    by_hand = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()
                            if p.grad is not None))

    (epoch,) = store.epochs(run_id)
    (step,) = store.steps(run_id)
    assert by_hand > 0.1  # so the step was clipped and the pre-clip value is what counts
    assert epoch["grad_norm"] == pytest.approx(by_hand, rel=1e-5)
    assert epoch["grad_norm_max"] == epoch["grad_norm_min"] == epoch["grad_norm"]
    assert step["grad_norm"] == pytest.approx(by_hand, rel=1e-5)
    assert epoch["clipped_steps"] == 1 and epoch["nonfinite_steps"] == 0
    assert step["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)


def test_stored_lr_sequence_is_what_the_configured_scheduler_gives(store, train_run):
    run_id, _ = train_run(epochs=9, t_0=2, t_mult=2, eta_min=1e-4, lr=3e-3)
    config = store.get_run(run_id)["config"]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=config["t_0"], T_mult=config["t_mult"], eta_min=config["eta_min"])
    expected = []
    for _ in range(9):
        expected.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    recorded = [e["lr"] for e in store.epochs(run_id)]
    assert recorded == pytest.approx(expected, rel=1e-12)
    assert len(set(recorded)) > 3  # the schedule really moved, with restarts
    for step in store.steps(run_id):
        assert step["lr"] == recorded[step["epoch"] - 1]


def test_epoch_grad_norm_summarises_the_recorded_steps(store, train_run):
    run_id, _ = train_run(epochs=3, batch_size=8, grad_accum=2, max_grad_norm=0.5)
    steps = store.steps(run_id)
    epochs = store.epochs(run_id)
    assert len(steps) == 3 * math.ceil(math.ceil(143 / 8) / 2)
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    for e in epochs:
        norms = [s["grad_norm"] for s in steps if s["epoch"] == e["epoch"]]
        assert e["steps"] == len(norms)
        assert e["grad_norm"] == pytest.approx(sum(norms) / len(norms))
        assert e["grad_norm_max"] == max(norms) and e["grad_norm_min"] == min(norms)
        assert e["clipped_steps"] == sum(n > 0.5 for n in norms)
        assert e["tokens_per_second"] > 0 and 0 <= e["token_accuracy"] <= 1


def test_hlbd_train_records_through_hlbd_run_what_a_loop_of_ones_own_gets(
        store, train_run):
    """hlbd train is hlbd.Run's first client: each step's ``clipped`` is its norm above
    --max-grad-norm, each checkpoint row has the step its state holds, and the loop's
    own module reaches neither the store nor the recorder (one recording path)."""
    run_id, _ = train_run(epochs=2, batch_size=8, grad_accum=2, max_grad_norm=1.5,
                          save_interval=1)
    steps = store.steps(run_id)
    clipped = [(p["step"], p["value"]) for p in store.points(run_id, "clipped")]
    assert clipped == [(s["step"], float(s["grad_norm"] > 1.5)) for s in steps]
    assert 0 < sum(v for _, v in clipped) < len(steps)
    ends = {e["epoch"]: max(s["step"] for s in steps if s["epoch"] == e["epoch"])
            for e in store.epochs(run_id)}
    assert [(c["epoch"], c["step"]) for c in store.checkpoints(run_id)] == sorted(ends.items())
    imports = Path(__file__).parents[1].joinpath("hlbd", "trainer.py").read_text()
    assert "hlbd.run import" in imports
    assert not [line for line in imports.splitlines() if line.startswith(("from", "import"))
                and ("hlbd.store" in line or "hlbd.recorder" in line)]


def test_default_model_visibly_learns_the_bundled_data(store, train_run):
    run_id, _ = train_run(epochs=8, d_model=64, n_layers=2, n_heads=4, d_ff=128)
    losses = [e["loss"] for e in store.epochs(run_id)]
    assert losses[-1] < 0.7 * losses[0]


def test_nonfinite_grad_norms_are_counted_not_averaged(store, train_run):
    run_id, _ = train_run(epochs=2, lr=1e8, max_grad_norm=0, weight_decay=0.0)
    steps = store.steps(run_id)
    bad = [s for s in steps if not math.isfinite(s["grad_norm"])]
    assert bad, "a learning rate of 1e8 should drive the gradients non-finite"
    for e in store.epochs(run_id):
        norms = [s["grad_norm"] for s in steps if s["epoch"] == e["epoch"]]
        finite = [n for n in norms if math.isfinite(n)]
        assert e["nonfinite_steps"] == len(norms) - len(finite)
        if finite:
            assert e["grad_norm"] == pytest.approx(sum(finite) / len(finite))
        else:
            assert e["grad_norm"] is None
    # NaN survives the round trip through the database as NaN, not as a missing value.
    nan_steps = [s for s in steps if s["grad_norm"] != s["grad_norm"]]
    with store.engine.connect() as conn:
        flagged = conn.execute(text(
            "SELECT count(*) FROM step_metrics WHERE run_id = :run_id AND grad_norm_is_nan"),
            {"run_id": run_id}).scalar()
    assert flagged == len(nan_steps)


def test_report_and_database_agree(store, train_run, tmp_path):
    run_id, outcome = train_run(epochs=3)
    report = json.loads((outcome.run_dir / REPORT_NAME).read_text())
    epochs = store.epochs(run_id)
    steps = store.steps(run_id)
    run = store.get_run(run_id)
    assert report["run_id"] == run_id
    assert report["control_losses"] == [e["loss"] for e in epochs]
    assert report["grad_norms"] == [e["grad_norm"] for e in epochs]
    assert report["learning_rates"] == [e["lr"] for e in epochs]
    assert report["batch_losses"] == [s["loss"] for s in steps]
    assert report["current_epoch"] == 3
    assert report["total_batches"] == len(steps)
    assert report["dataset_stats"] == run["dataset_stats"] == {BUNDLED: 143}
    assert "timestamp" in report


def test_checkpoints_load_weights_only_and_carry_the_run_id(store, train_run):
    run_id, outcome = train_run(epochs=5, save_interval=2)
    files = sorted(Path(outcome.run_dir).glob("checkpoint_epoch_*.pt"))
    assert [f.name for f in files] == ["checkpoint_epoch_2.pt", "checkpoint_epoch_4.pt",
                                       "checkpoint_epoch_5.pt"]
    state = torch.load(files[-1], weights_only=True)
    assert state["run_id"] == run_id and state["epoch"] == 5
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "vocab", "config",
                "history"):
        assert key in state
    assert state["vocab"] == store.get_run(run_id)["vocab"]
    assert state["history"]["control_losses"] == [e["loss"] for e in store.epochs(run_id)]
    assert load_checkpoint(files[0])["epoch"] == 2
    rows = store.checkpoints(run_id)
    assert [(r["epoch"], r["path"]) for r in rows] == [
        (2, str(files[0])), (4, str(files[1])), (5, str(files[2]))]
    assert not list(Path(outcome.run_dir).glob("*.tmp"))


def test_finished_run_has_status_and_epochs(store, train_run):
    run_id, outcome = train_run(epochs=2, name="named")
    (run,) = store.list_runs()
    assert outcome.status == "finished"
    assert run["run_id"] == run_id and run["name"] == "named"
    assert run["status"] == run["display_status"] == "finished"
    assert run["finished_at"] is not None and run["epochs"] == 2
    assert run["last_loss"] == store.epochs(run_id)[-1]["loss"]


def test_runs_listing_shows_a_nan_last_loss_as_nan_not_missing(store):
    run_id = store.create_run("nan", {}, {})
    store.record_epoch(run_id, 1, {"epoch": 1, "loss": 2.0, "lr": 1e-3})
    store.record_epoch(run_id, 1, {"epoch": 2, "loss": math.nan, "lr": 1e-3})
    (run,) = store.list_runs()
    assert math.isnan(run["last_loss"]) and run["best_loss"] == 2.0 and run["epochs"] == 2
