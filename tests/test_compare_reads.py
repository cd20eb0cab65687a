"""The explorer's library reads: downsampled steps keep extremes, never mix in superseded rows."""

from __future__ import annotations

import math

import pytest

from hlbd import compare, database
from hlbd.runner import resume_checkpoint


def read_engine(store):
    return database.read_engine(store.url)


def effective_steps_by_bucket(store, run_id, buckets):
    steps = store.steps(run_id)
    for b in buckets:
        inside = [s for s in steps if b["step"] <= s["step"] < b["step"] + b["width"]]
        yield b, inside


def test_short_series_come_back_one_bucket_per_step_exactly(store, train_run):
    run_id, _ = train_run(epochs=2)
    steps = store.steps(run_id)
    buckets = compare.step_buckets(read_engine(store), [run_id], max_points=len(steps))
    assert [b["step"] for b in buckets] == [s["step"] for s in steps]
    for b, s in zip(buckets, steps):
        assert (b["width"], b["steps"], b["epoch"]) == (1, 1, s["epoch"])
        assert b["loss"] == b["loss_min"] == b["loss_max"] == pytest.approx(s["loss"])
        assert b["grad_norm"] == pytest.approx(s["grad_norm"])
        assert b["lr"] == s["lr"]


def test_downsampling_keeps_each_buckets_extremes_so_a_one_step_spike_survives(store,
                                                                                train_run):
    # A learning rate of 50 without clipping makes real, wildly uneven grad norms.
    run_id, _ = train_run(epochs=4, lr=50.0, max_grad_norm=0.0)
    steps = store.steps(run_id)
    buckets = compare.step_buckets(read_engine(store), [run_id], max_points=5)
    assert len(buckets) <= 6 and all(b["width"] > 1 for b in buckets)
    assert sum(b["steps"] for b in buckets) == len(steps)
    for b, inside in effective_steps_by_bucket(store, run_id, buckets):
        norms = [s["grad_norm"] for s in inside if math.isfinite(s["grad_norm"])]
        losses = [s["loss"] for s in inside if math.isfinite(s["loss"])]
        assert b["grad_norm_max"] == pytest.approx(max(norms))
        assert b["grad_norm_min"] == pytest.approx(min(norms))
        assert b["grad_norm"] == pytest.approx(sum(norms) / len(norms))
        assert b["loss_max"] == pytest.approx(max(losses))
        assert b["epoch"] == inside[0]["epoch"] and b["last_epoch"] == inside[-1]["epoch"]
    spike = max(s["grad_norm"] for s in steps if math.isfinite(s["grad_norm"]))
    assert max(b["grad_norm_max"] for b in buckets) == pytest.approx(spike)


def test_nan_and_inf_steps_are_counted_never_averaged(store, train_run):
    run_id, _ = train_run(epochs=2, lr=1e8, max_grad_norm=0, weight_decay=0.0)
    steps = store.steps(run_id)
    assert any(not math.isfinite(s["grad_norm"]) for s in steps)
    buckets = compare.step_buckets(read_engine(store), [run_id], max_points=4)
    for b, inside in effective_steps_by_bucket(store, run_id, buckets):
        bad = [s for s in inside if not math.isfinite(s["grad_norm"])]
        assert b["grad_norm_nonfinite"] == len(bad)
        assert b["loss_nonfinite"] == sum(not math.isfinite(s["loss"]) for s in inside)
        for key in ("grad_norm", "grad_norm_min", "grad_norm_max", "loss", "loss_max"):
            assert b[key] is None or math.isfinite(b[key])


def test_superseded_steps_of_an_earlier_attempt_are_left_out(store, train_run, tmp_path):
    run_id, outcome = train_run(epochs=3, save_interval=1)
    resume_checkpoint(store, outcome.run_dir / "checkpoint_epoch_1.pt", epochs=3,
                      progress=False)
    effective = store.steps(run_id)
    assert len(store.steps(run_id, include_superseded=True)) > len(effective)
    buckets = compare.step_buckets(read_engine(store), [run_id], max_points=10_000)
    assert [(b["step"], b["segment"]) for b in buckets] == [(s["step"], s["segment"])
                                                             for s in effective]


def test_grad_norm_extremes_are_the_largest_recorded_epoch_values(store, train_run):
    run_id, _ = train_run(epochs=2)
    extremes = compare.grad_norm_extremes(read_engine(store))[run_id]
    epochs = store.epochs(run_id)
    assert extremes["max_grad_norm"] == max(e["grad_norm_max"] for e in epochs)
    assert extremes["nonfinite_steps"] == sum(e["nonfinite_steps"] for e in epochs)


def test_config_diff_keeps_only_keys_that_differ(store, train_run):
    first, _ = train_run(epochs=1)
    second, _ = train_run(epochs=1, lr=5e-3, name="other")
    configs = {"a": store.get_run(first)["config"], "b": store.get_run(second)["config"]}
    diff = compare.config_diff(configs)
    assert set(diff) == {k for k in configs["a"] if configs["a"][k] != configs["b"][k]}
    assert diff["lr"] == {"a": configs["a"]["lr"], "b": 5e-3}
    assert compare.config_diff({"a": configs["a"], "c": {**configs["a"]}}) == {}


def test_infinite_steps_are_counted_and_leave_no_infinite_aggregate(store):
    # PostgreSQL's JSON writes an infinite aggregate as the string "Infinity".
    run_id = store.create_run("inf", {}, {})
    store.record_steps(run_id, 1, [
        {"step": 1, "epoch": 1, "loss": 1.0, "grad_norm": 2.0, "lr": 1e-3},
        {"step": 2, "epoch": 1, "loss": math.inf, "grad_norm": math.inf, "lr": 1e-3},
        {"step": 3, "epoch": 1, "loss": 3.0, "grad_norm": 4.0, "lr": 1e-3}])
    (bucket,) = compare.step_buckets(read_engine(store), [run_id], max_points=1)
    assert (bucket["steps"], bucket["loss_nonfinite"], bucket["grad_norm_nonfinite"]) == (
        3, 1, 1)
    assert (bucket["loss_max"], bucket["grad_norm_max"], bucket["loss_min"]) == (None, None,
                                                                                 1.0)
