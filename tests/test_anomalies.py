"""Anomaly rules: flagged live by the trainer, by `hlbd anomalies`, from real runs."""

from __future__ import annotations

import json
import math
import random

import torch
from click.testing import CliRunner
from helpers.backends import sqlite_only
from helpers.tiny import tiny_config

from hlbd.anomalies import Thresholds, detect, expected_lrs, not_checked
from hlbd.checkpoint import load_checkpoint, save_checkpoint
from hlbd.cli import main
from hlbd.config import TrainConfig
from hlbd.runner import resume_checkpoint, start_run
from hlbd.trainer import make_scheduler


def test_exploding_run_is_flagged_by_the_trainer_and_the_cli(store, train_run, db_url,
                                                              caplog):
    calm_id, _ = train_run(epochs=2)
    with caplog.at_level("WARNING", logger="hlbd"):
        wild_id, _ = train_run(epochs=2, lr=50.0, max_grad_norm=0)
    stored = store.anomalies(wild_id)
    assert stored and {a["rule"] for a in stored} & {"grad_explosion", "nonfinite_grad_norm"}
    assert store.anomalies(calm_id) == []
    assert any("anomaly [grad_explosion]" in r.message for r in caplog.records)
    explosion = next(a for a in stored if a["rule"] == "grad_explosion")
    epoch = next(e for e in store.epochs(wild_id) if e["epoch"] == explosion["epoch"])
    assert explosion["value"] == epoch["grad_norm_max"] > 10 and explosion["threshold"] == 10
    step = next(s for s in store.steps(wild_id) if s["step"] == explosion["step"])
    assert step["grad_norm"] == explosion["value"]

    result = CliRunner().invoke(main, ["anomalies", "--db", db_url])
    assert result.exit_code == 0
    assert "grad_explosion" in result.output and wild_id[:12] in result.output
    assert calm_id[:12] not in result.output
    # Thresholds are the user's: above the run's own peak, no explosion is flagged.
    peak = max(e["grad_norm_max"] for e in store.epochs(wild_id)
               if e["grad_norm_max"] is not None)
    quiet = CliRunner().invoke(main, ["anomalies", wild_id, "--grad-explode", str(peak * 2),
                                      "--db", db_url])
    assert "grad_explosion" not in quiet.output


def test_a_nonfinite_loss_flag_names_the_first_step_whose_loss_was_nan(store, train_run,
                                                                       db_url):
    # An LR of 1e8 without clipping drives the loss to NaN within the first epoch.
    run_id, _ = train_run(epochs=2, lr=1e8, max_grad_norm=0.0, weight_decay=0.0)
    steps = store.steps(run_id)
    first_bad = {}
    for s in steps:
        if not math.isfinite(s["loss"]):
            first_bad.setdefault(s["epoch"], s["step"])
    assert first_bad  # the run did go NaN
    # The trainer's live flags, `hlbd anomalies` and the rules over all steps agree.
    for flags in (store.anomalies(run_id), detect(store.get_run(run_id),
                                                  store.epochs(run_id), steps)):
        nonfinite = {f["epoch"]: f["step"] for f in flags if f["rule"] == "nonfinite_loss"}
        assert nonfinite == first_bad
    result = CliRunner().invoke(main, ["anomalies", run_id, "--db", db_url])
    lines = [line for line in result.output.splitlines() if "nonfinite_loss" in line]
    assert lines and all(f"first at step {first_bad[e]}" in " ".join(lines)
                         for e in first_bad)


def test_a_resume_that_lost_scheduler_state_shows_as_unexplained_lr(store, train_run,
                                                                    tmp_path):
    run_id, outcome = train_run(epochs=4, save_interval=2, t_0=10)
    path = outcome.run_dir / "checkpoint_epoch_2.pt"
    state = load_checkpoint(path)
    fresh = make_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)],
                                           lr=state["config"]["lr"]),
                           TrainConfig.from_dict(state["config"]))
    state["scheduler"] = fresh.state_dict()  # what a trainer that forgot it would restore
    lost = tmp_path / "lost_scheduler.pt"
    save_checkpoint(lost, {k: v for k, v in state.items() if k not in ("format",
                                                                        "format_version")})
    resume_checkpoint(store, lost, epochs=6, progress=False)

    flags = detect(store.get_run(run_id), store.epochs(run_id), store.steps(run_id))
    unexplained = [f for f in flags if f["rule"] == "lr_unexplained"]
    assert unexplained and unexplained[0]["epoch"] == 4
    assert all(f["epoch"] > 3 for f in unexplained)


def test_straight_run_lr_is_explained_by_its_config(store, train_run):
    run_id, _ = train_run(epochs=7, t_0=2, t_mult=2)
    flags = detect(store.get_run(run_id), store.epochs(run_id), store.steps(run_id))
    assert [f for f in flags if f["rule"].startswith("lr_")] == []


def _epochs(losses, **fields):
    return [{"epoch": i + 1, "segment": 1, "loss": loss, **fields}
            for i, loss in enumerate(losses)]


def test_loss_spike_uses_the_runs_own_recent_epochs():
    run = {"run_id": "r", "config": {}}
    steady = [2.0, 1.9, 1.85, 1.8, 1.78, 1.76]
    assert [f["rule"] for f in detect(run, _epochs(steady))] == []
    flags = detect(run, _epochs([*steady, 3.5, 1.7]))
    assert [(f["rule"], f["epoch"]) for f in flags] == [("loss_spike", 7)]


def test_loss_rising_for_several_epochs_is_flagged_once_the_run_is_long_enough():
    run = {"run_id": "r", "config": {}}
    flags = detect(run, _epochs([1.0, 1.05, 1.1, 1.15]), thresholds=Thresholds(spike_z=99))
    assert [(f["rule"], f["epoch"]) for f in flags] == [("loss_rising", 4)]
    # The noise of a converged run rises too, by less than loss_min_rise: no flag.
    assert detect(run, _epochs([0.02, 0.021, 0.022, 0.023])) == []


def test_loss_may_climb_right_after_the_lr_went_up_again():
    run = {"run_id": "r", "config": {}}
    lrs = [1e-3, 1e-4, 1e-5, 1e-3, 9e-4, 8e-4, 7e-4]  # a warm restart at epoch 4
    losses = [1.0, 0.8, 0.7, 0.75, 0.8, 0.9, 0.85]
    epochs = [{**e, "lr": lr} for e, lr in zip(_epochs(losses), lrs)]
    assert detect(run, epochs) == []
    late = detect(run, epochs, thresholds=Thresholds(restart_grace=0))
    assert [f["rule"] for f in late] == ["loss_rising"]


def test_nonfinite_and_vanishing_and_zero_lr_rules():
    run = {"run_id": "r", "config": {}}
    epochs = [
        {"epoch": 1, "loss": math.nan, "grad_norm": 0.001, "nonfinite_steps": 2,
         "lr": 0.0},
        {"epoch": 2, "loss": 1.0, "grad_norm": None, "lr": 0.0},
    ]
    flags = {(f["rule"], f["epoch"]) for f in detect(run, epochs)}
    assert flags == {("nonfinite_loss", 1), ("nonfinite_grad_norm", 1),
                     ("grad_vanishing", 1), ("lr_zero", 2)}


def test_values_not_recorded_raise_no_flags():
    run = {"run_id": "r", "config": {}}
    epochs = [{"epoch": i, "loss": 1.0 / i, "grad_norm": None, "lr": None}
              for i in range(1, 6)]
    assert detect(run, epochs) == []


def test_an_epoch_with_only_a_mean_grad_norm_is_still_checked_for_explosion():
    run = {"run_id": "r", "config": {}}
    epochs = [{"epoch": 1, "loss": 1.0, "grad_norm": 12.5, "grad_norm_max": None,
               "lr": None}]
    (flag,) = detect(run, epochs)
    assert (flag["rule"], flag["value"], flag["step"]) == ("grad_explosion", 12.5, None)


def test_the_expected_lrs_are_the_trainers_scheduler_to_the_last_bit():
    # The LR rule computes the schedule without torch (so `hlbd anomalies` starts fast):
    # it must be exactly what the trainer's CosineAnnealingWarmRestarts sets.
    for lr, t_0, t_mult, eta_min in [(2e-3, 10, 2, 1e-5), (0.1, 1, 1, 0.0), (3e-4, 3, 3, 0.0),
                                     (1.0, 7, 1, 0.5), (5e-2, 2, 2, 1e-6)]:
        config = TrainConfig(lr=lr, t_0=t_0, t_mult=t_mult, eta_min=eta_min, epochs=150)
        optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=lr)
        scheduler = make_scheduler(optimizer, config)
        used = []
        for _ in range(config.epochs):
            used.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
        assert expected_lrs(config.to_dict(), config.epochs) == used


def test_overfitting_is_val_loss_rising_while_the_training_loss_falls():
    run = {"run_id": "r", "config": {}}
    falling = _epochs([3.0, 2.5, 2.0, 1.6, 1.3, 1.1, 0.9])
    val = {1: 2.9, 2: 2.6, 3: 2.5, 4: 2.55, 5: 2.62, 6: 2.70, 7: 2.8}
    flags = detect(run, falling, val_losses=val)
    assert [(f["rule"], f["epoch"]) for f in flags] == [("overfitting", 6), ("overfitting", 7)]
    assert flags[0]["value"] == 2.70 and flags[0]["threshold"] == 3
    # Rising val_loss while the training loss rises too is not overfitting, nor is a
    # rise too small to tell from noise, nor a run that was never evaluated.
    rising = detect(run, _epochs([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]), val_losses=val)
    assert [f for f in rising if f["rule"] == "overfitting"] == []
    tiny_rise = {n: 2.5 + n * 0.001 for n in range(1, 8)}
    assert detect(run, falling, val_losses=tiny_rise) == []
    assert detect(run, falling) == []
    assert not_checked(run, falling)["overfitting"] == "no val_loss recorded"
    assert "overfitting" not in not_checked(run, falling, val)


@sqlite_only  # a training run: the store's backend changes nothing of what it measures
def test_a_run_that_memorises_its_training_pairs_is_flagged_overfitting(store, tmp_path,
                                                                        db_url):
    """Random answers to random questions: nothing to learn that carries over to the
    held-out pairs, so as the model memorises the rest their loss climbs. The trainer
    flags it live; `hlbd anomalies` says so too."""
    rng = random.Random(0)
    letters = "abcdefghij"
    items = [{"input": "".join(rng.choices(letters, k=5)),
              "output": "".join(rng.choices(letters, k=4))} for _ in range(60)]
    dataset = tmp_path / "random.json"
    dataset.write_text(json.dumps({"data": {"noise": items}}))
    outcome = start_run(tiny_config(datasets=[str(dataset)], epochs=40, lr=1e-2, t_0=40,
                                    d_model=64, d_ff=128, batch_size=8, eval_max_pairs=0),
                        store, runs_root=tmp_path / "runs", progress=False)
    stored = [a for a in store.anomalies(outcome.run_id) if a["rule"] == "overfitting"]
    assert stored, [(e["epoch"], e["loss"]) for e in store.epochs(outcome.run_id)]
    val = store.epoch_values(outcome.run_id, "val_loss")
    first = stored[0]
    assert first["value"] == val[first["epoch"]]
    result = CliRunner().invoke(main, ["anomalies", outcome.run_id, "--db", db_url])
    assert "overfitting" in result.output
