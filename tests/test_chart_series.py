"""The compare charts' data (app/series.py): where each point goes and what is drawn.

Small runs written out by hand, every expected number worked out by hand beside it.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pytest
from helpers.explorer import APP

T0 = datetime(2024, 5, 1, 12, 0, 0)


@pytest.fixture
def shape(monkeypatch):
    """app/series.py, imported as Streamlit imports it (app/ on sys.path)."""
    monkeypatch.syspath_prepend(str(APP.parent))
    import series

    return series


def epoch(n: int, minutes: float | None = None, **values) -> dict:
    """One epoch record as the store returns it; ``minutes`` after T0 it was recorded."""
    when = None if minutes is None else T0 + timedelta(minutes=minutes)
    return {"epoch": n, "recorded_at": when, **values}


def run(shape, label: str, epochs: list[dict], **more):
    return shape.RunSeries(run_id=label, label=label, created_at=T0, epochs=epochs,
                           color="#4e79a7", **more)


# -- x placement ---------------------------------------------------------------------------

def test_a_point_goes_at_its_epoch_its_step_or_its_wall_time(shape):
    point = {"epoch": 3, "step": 30, "when": T0 + timedelta(seconds=90), "start": T0,
             "scale": 60.0}
    assert shape.x_position("epoch", **point) == 3.0
    assert shape.x_position("step", **point) == 30.0
    assert shape.x_position("wall", **point) == 1.5      # 90 s in minutes


def test_a_point_without_a_place_on_the_axis_gets_nan(shape):
    assert math.isnan(shape.x_position("step", epoch=3, step=None, when=T0, start=T0, scale=1))
    assert math.isnan(shape.x_position("wall", epoch=3, step=30, when=None, start=T0, scale=1))
    assert math.isnan(shape.x_position("epoch", epoch=None, step=30, when=T0, start=T0,
                                       scale=1))


def test_wall_time_is_the_time_since_the_start_in_the_axis_unit(shape):
    assert shape.wall_time(T0 + timedelta(seconds=90), T0) == 90.0
    assert shape.wall_time(T0 + timedelta(seconds=90), T0, 60.0) == 1.5
    assert shape.wall_time(T0 + timedelta(hours=3), T0, 3600.0) == 3.0
    assert math.isnan(shape.wall_time(None, T0, 60.0))


def test_the_wall_unit_follows_the_longest_time_on_the_axis(shape):
    assert shape.wall_unit(119) == ("s", 1.0)
    assert shape.wall_unit(120) == ("min", 60.0)
    assert shape.wall_unit(7199) == ("min", 60.0)
    assert shape.wall_unit(7200) == ("h", 3600.0)
    short = run(shape, "short", [epoch(1, 1), epoch(2, None)])
    long = run(shape, "long", [epoch(1, 30), epoch(2, 90)])
    assert shape.wall_scale([short]) == ("s", 1.0)          # 60 s; epoch 2 has no time
    assert shape.wall_scale([short, long]) == ("min", 60.0)  # 90 min
    assert shape.wall_scale([run(shape, "none", [epoch(1)])]) == ("s", 1.0)


def test_epochs_are_placed_on_each_axis(shape):
    a = run(shape, "a", [epoch(1, 30, token_accuracy=0.5), epoch(2, 90, token_accuracy=0.75)],
            epoch_steps=[{"epoch": 1, "segment": 1, "first_step": 1, "last_step": 10},
                         {"epoch": 2, "segment": 1, "first_step": 11, "last_step": 20}])
    by_axis = {axis: shape.metric_data([a], "token_accuracy", axis, title="Token accuracy")
               for axis in ("epoch", "step", "wall")}
    assert by_axis["epoch"].points["x"].tolist() == [1.0, 2.0]
    assert by_axis["wall"].points["x"].tolist() == [30.0, 90.0]  # minutes: the longest is 90
    # Token accuracy is recorded per epoch only: on steps, an epoch sits at its last step.
    steps = by_axis["step"]
    assert steps.points["x"].tolist() == [10.0, 20.0]
    assert steps.points["value"].tolist() == [0.5, 0.75]
    assert steps.hover["at"].tolist() == ["epoch 1 (ends at step 10)",
                                          "epoch 2 (ends at step 20)"]


def test_flags_and_resumes_are_placed_on_each_axis(shape):
    a = run(shape, "a", [epoch(1, 10, grad_norm=1.0), epoch(2, 20, grad_norm=50.0),
                         epoch(3, 30, grad_norm=1.0)],
            segments=[{"segment": 1, "start_epoch": 0, "started_at": T0},
                      {"segment": 2, "start_epoch": 1, "started_at": T0 + timedelta(minutes=12)}],
            flags=[{"epoch": 2, "step": 15, "rule": "grad_explosion", "message": "big"},
                   {"epoch": 3, "step": None, "rule": "grad_vanishing", "message": "small"},
                   {"epoch": 2, "step": None, "rule": "loss_spike", "message": "on loss"}],
            epoch_steps=[{"epoch": 1, "segment": 1, "first_step": 1, "last_step": 10},
                         {"epoch": 2, "segment": 2, "first_step": 11, "last_step": 20},
                         {"epoch": 3, "segment": 2, "first_step": 21, "last_step": 30}])
    placed = {axis: shape.metric_data([a], "grad_norm", axis, title="Gradient norm")
              for axis in ("epoch", "step", "wall")}
    # The loss rule's flag goes on the loss chart, not here.
    assert placed["epoch"].flags["x"].tolist() == [2.0, 3.0]
    # On steps: the step the rule named, else the flagged epoch's last step.
    assert placed["step"].flags["x"].tolist() == [15.0, 30.0]
    # On wall time: when the flagged epoch was recorded (30 min longest: minutes).
    assert placed["wall"].flags["x"].tolist() == [20.0, 30.0]
    # The resume (segment 2, from the epoch 1 checkpoint) sits between epochs 1 and 2,
    # just before its first step, and at the time it started.
    assert placed["epoch"].resumes["x"].tolist() == [1.5]
    assert placed["step"].resumes["x"].tolist() == [10.5]
    assert placed["wall"].resumes["x"].tolist() == [12.0]
    assert placed["epoch"].resumes["what"].tolist() == [
        "resumed (segment 2) from the epoch 1 checkpoint"]
    # A zoom keeps only the markers inside it.
    zoomed = shape.metric_data([a], "grad_norm", "epoch", title="Gradient norm",
                               x_range=(2.5, 3.0))
    assert zoomed.flags["x"].tolist() == [3.0] and zoomed.resumes.empty


def test_each_rule_is_marked_on_its_metrics_chart(shape):
    assert shape.rule_metric("loss_spike") == "loss"
    assert shape.rule_metric("nonfinite_loss") == "loss"
    assert shape.rule_metric("lr_zero") == "lr"
    assert shape.rule_metric("grad_explosion") == "grad_norm"


# -- smoothing -----------------------------------------------------------------------------

def test_smoothing_is_tensorboards_debiased_ema(shape):
    # weight 0.5: ema = 0.5 ema + 0.5 x, divided by 1 - 0.5^(t+1):
    # 0.5/0.5 = 1, 0.25/0.75 = 1/3, 0.125/0.875 = 1/7.
    assert shape.smooth(np.array([1.0, 0.0, 0.0]), 0.5) == pytest.approx([1, 1 / 3, 1 / 7])
    assert shape.smooth(np.array([2.0, 2.0, 2.0]), 0.9).tolist() == [2.0, 2.0, 2.0]
    assert shape.smooth(np.array([1.0, 0.0]), 0.0).tolist() == [1.0, 0.0]


def test_the_smoothed_line_leaves_the_raw_values_as_recorded(shape):
    a = run(shape, "a", [epoch(1, loss=1.0, lr=0.1), epoch(2, loss=0.0, lr=0.05),
                         epoch(3, loss=0.0, lr=0.01)])
    loss = shape.metric_data([a], "loss", "epoch", title="Loss", smoothing=0.5).points
    assert loss["value"].tolist() == [1.0, 0.0, 0.0]
    assert loss["smooth"].tolist() == pytest.approx([1, 1 / 3, 1 / 7])
    # Smoothed over the whole run, then cut to the zoom: epoch 3 keeps its 1/7.
    zoomed = shape.metric_data([a], "loss", "epoch", title="Loss", smoothing=0.5,
                               x_range=(3.0, 3.0)).points
    assert zoomed["smooth"].tolist() == pytest.approx([1 / 7])
    # The LR is never smoothed.
    lr = shape.metric_data([a], "lr", "epoch", title="Learning rate", smoothing=0.5).points
    assert "smooth" not in lr and lr["value"].tolist() == [0.1, 0.05, 0.01]


# -- robust y range ------------------------------------------------------------------------

def test_one_exploding_run_is_cut_from_the_y_range_and_marked_on_its_edge(shape):
    calm = run(shape, "calm", [epoch(1, loss=1.0), epoch(2, loss=2.0), epoch(3, loss=3.0)])
    exploded = run(shape, "exploded", [epoch(1, loss=2.0), epoch(2, loss=4.0),
                                       epoch(3, loss=1e9)])
    data = shape.metric_data([calm, exploded], "loss", "epoch", title="Loss")
    # Typical tops (75th percentiles): calm 2.5, exploded 5e8, far more than 10 x 2.5:
    # exploded is not calm. The range is calm's values, 1 to 3, padded by 5% of 2.
    assert data.domain == pytest.approx([0.9, 3.1])
    assert data.clipped[["run", "x", "what", "edge"]].to_dict("records") == [
        {"run": "exploded", "x": 2.0, "what": "4 (off the chart)", "edge": 0.97},
        {"run": "exploded", "x": 3.0, "what": "1e+09 (off the chart)", "edge": 0.97}]
    assert data.notes == [("Robust y range 0.9 to 3.1: 2 point(s) of exploded beyond it "
                           "are marked on its edge (turn off 'Robust y range' to see "
                           "them all)")]
    plain = shape.metric_data([calm, exploded], "loss", "epoch", title="Loss", robust=False)
    assert plain.domain is None and plain.clipped.empty and plain.notes == []


def test_a_run_that_exploded_and_stayed_high_does_not_flatten_the_others(shape):
    # Issue 23's case: one run's loss 2493, then near 48, beside runs near 3; a fixed
    # multiple of the calm runs' top (100 x) kept the 48s in range.
    calm = run(shape, "calm", [epoch(1, loss=4.0), epoch(2, loss=3.0), epoch(3, loss=2.5)])
    steady = run(shape, "steady", [epoch(1, loss=3.5), epoch(2, loss=2.0),
                                   epoch(3, loss=1.5)])
    wild = run(shape, "wild", [epoch(1, loss=2493.0), epoch(2, loss=48.0),
                               epoch(3, loss=47.5)])
    data = shape.metric_data([calm, steady, wild], "loss", "epoch", title="Loss")
    # Calm runs' values span 1.5 to 4; padded by 5% of 2.5.
    assert data.domain == pytest.approx([1.375, 4.125])
    assert sorted(data.clipped["x"]) == [1.0, 2.0, 3.0]
    assert set(data.clipped["run"]) == {"wild"}
    # A run's own value inside the calm range (here none) would stay drawn; the calm
    # runs are drawn whole.
    assert set(data.points["run"]) == {"calm", "steady", "wild"}


def test_the_lr_accuracy_and_throughput_are_never_cut(shape):
    calm = run(shape, "calm", [epoch(1, lr=0.002, tokens_per_second=1e4),
                               epoch(2, lr=0.001, tokens_per_second=1.1e4)])
    wild = run(shape, "wild", [epoch(1, lr=1.0, tokens_per_second=5e5),
                               epoch(2, lr=1.0, tokens_per_second=6e5)])
    for metric in ("lr", "tokens_per_second"):
        data = shape.metric_data([calm, wild], metric, "epoch", title=metric)
        assert data.domain is None and data.clipped.empty
    assert not shape.robust_applies("p:lr/1") and shape.robust_applies("p:eval/loss")


def test_runs_a_few_times_apart_keep_their_full_range(shape):
    low = run(shape, "low", [epoch(1, loss=1.0), epoch(2, loss=3.0)])
    high = run(shape, "high", [epoch(1, loss=10.0), epoch(2, loss=30.0)])
    data = shape.metric_data([low, high], "loss", "epoch", title="Loss")
    assert data.domain is None and data.clipped.empty


# -- NaN/Inf and values not recorded -------------------------------------------------------

def test_a_nan_is_a_marker_not_a_number_and_the_line_breaks_there(shape):
    a = run(shape, "a", [epoch(1, loss=2.0), epoch(2, loss=float("nan")),
                         epoch(3, loss=1.0), epoch(4, loss=float("inf"))])
    data = shape.metric_data([a], "loss", "epoch", title="Loss")
    assert data.points["x"].tolist() == [1.0, 3.0]
    assert data.points["value"].tolist() == [2.0, 1.0]
    assert data.points["piece"].tolist() == [0, 1]     # two pieces: no line across epoch 2
    assert data.nonfinite.to_dict("records") == [
        {"run": "a", "x": 2.0, "at": "epoch 2", "what": "loss is nan"},
        {"run": "a", "x": 4.0, "at": "epoch 4", "what": "loss is inf"}]
    assert data.hover["x"].tolist() == [1.0, 3.0] and data.missing == []


def test_an_epoch_with_nonfinite_steps_is_marked_with_their_count(shape):
    a = run(shape, "a", [epoch(1, grad_norm=1.0, nonfinite_steps=0),
                         epoch(2, grad_norm=1.5, nonfinite_steps=3)])
    data = shape.metric_data([a], "grad_norm", "epoch", title="Gradient norm")
    assert data.points["value"].tolist() == [1.0, 1.5]
    assert data.nonfinite[["x", "what"]].to_dict("records") == [
        {"x": 2.0, "what": "3 step(s) with a NaN/Inf gradient norm"}]


def test_a_value_not_recorded_is_not_drawn(shape):
    a = run(shape, "a", [epoch(1, loss=2.0), epoch(2, loss=None), epoch(3, loss=1.0)])
    data = shape.metric_data([a], "loss", "epoch", title="Loss")
    assert data.points["x"].tolist() == [1.0, 3.0]
    assert data.points["piece"].tolist() == [0, 1]     # nor bridged by the line
    assert data.nonfinite.empty                          # nor marked as a NaN
    assert data.hover["x"].tolist() == [1.0, 3.0]
    assert data.missing == []


def test_a_run_that_never_recorded_a_metric_is_named_not_recorded(shape):
    a = run(shape, "a", [epoch(1, 10, loss=2.0), epoch(2, 20, loss=1.0)])
    b = run(shape, "b", [epoch(1, 10, loss=None)])
    untimed = run(shape, "untimed", [epoch(1, None, loss=3.0)])
    data = shape.metric_data([a, b], "loss", "epoch", title="Loss")
    assert data.points["run"].unique().tolist() == ["a"]
    assert data.missing == ["b"]
    # Recorded, but with no time to place it on the wall-time axis.
    wall = shape.metric_data([a, untimed], "loss", "wall", title="Loss")
    assert wall.points["run"].unique().tolist() == ["a"]
    assert wall.missing == ["untimed (no recording times)"]
