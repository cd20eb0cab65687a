"""The Compare page's charts of several runs as one: validation curves beside their
training curve, and runs grouped by a config key or their tags (mean with a min-max band
over the members that have a value at each x)."""

from __future__ import annotations

import math

import pytest
from helpers.explorer import charts, compare, open_app
from helpers.tiny import tiny_config

from hlbd.runner import start_run
from hlbd.store import Store, buckets


@pytest.fixture(scope="module")
def seeds(databases, tmp_path_factory):
    """Real tiny runs: three of one config but for their seed (one of them trained an
    epoch less), tagged "sweep", and one with another learning rate, tagged "probe"."""
    root = tmp_path_factory.mktemp("groups")
    db = databases.new(root)
    store = Store.open(db)

    def train(**overrides) -> str:
        return start_run(tiny_config(**overrides), store, runs_root=root / "runs",
                         progress=False).run_id

    ids = {"seed0": train(name="seed0", epochs=3, seed=0),
           "seed1": train(name="seed1", epochs=3, seed=1),
           "short": train(name="short", epochs=2, seed=2),
           "faster": train(name="faster", epochs=3, seed=0, lr=5e-3)}
    for name in ("seed0", "seed1", "short"):
        store.tag(ids[name], ["sweep"])
    store.tag(ids["faster"], ["probe"])
    yield db, ids, store
    store.close()
    databases.drop(db)


def label(store, run_id: str) -> str:
    return f"{store.get_run(run_id)['name']} · {run_id[:8]}"


def layers_of(chart, data: str) -> list[dict]:
    return [m for m in chart.marks() if m["data"] == data]


# -- validation curves ----------------------------------------------------------------


@pytest.mark.parametrize("x_axis", ["epoch", "step"])
def test_val_loss_is_drawn_dashed_in_its_runs_colour_on_the_loss_chart(seeds, monkeypatch,
                                                                       x_axis):
    db, ids, store = seeds
    picked = [ids["seed0"], ids["faster"]]
    at = compare(open_app(monkeypatch, db), picked, x_axis=x_axis)
    assert not at.exception
    loss = charts(at)["Loss"]
    drawn = loss.frame("validation", ["run", "x", "value"])
    for run_id in picked:
        stored = store.epoch_values(run_id, "val_loss")
        assert len(stored) == 3   # hlbd train evaluated the held-out split each epoch
        ends = {e["epoch"]: e["last_step"] for e in buckets.epoch_steps(store.engine, run_id)}
        where = {n: (n if x_axis == "epoch" else ends[n]) for n in stored}
        mine = drawn[drawn["run"] == label(store, run_id)].sort_values("x")
        assert list(mine["x"]) == [float(where[n]) for n in sorted(stored)]
        assert list(mine["value"]) == pytest.approx([stored[n] for n in sorted(stored)])
    # One line per run in the run's colour (the training line's colour scale), dashed,
    # and the style legend says which line is the held-out one.
    [line] = [m for m in layers_of(loss, "validation_loss") if m["type"] == "line"]
    [training] = [m for m in layers_of(loss, "points_loss") if m["type"] == "line"]
    assert line["encoding"]["color"] == training["encoding"]["color"]
    dash = line["encoding"]["strokeDash"]
    assert dash["datum"] == "validation (held out)"
    solid, dashed = dash["scale"]["range"]
    assert solid == [1, 0] and dashed[0] > 0 and dashed[1] > 0
    assert "strokeDash" not in training["encoding"]
    # The hover tooltip names the held-out values as validation.
    tooltip = next(m for m in loss.marks() if m["encoding"].get("tooltip")
                   and m["data"] == "hover_loss")["encoding"]["tooltip"]
    titles = {t["field"]: t["title"] for t in tooltip}
    for k, run_id in enumerate(picked):
        assert titles[f"w{k}"] == f"{label(store, run_id)} · validation"
    for n, value in store.epoch_values(ids["seed0"], "val_loss").items():
        x = float(n if x_axis == "epoch" else
                  {e["epoch"]: e["last_step"]
                   for e in buckets.epoch_steps(store.engine, ids["seed0"])}[n])
        assert loss.hover.set_index("x").loc[x, "w0"] == pytest.approx(value)


def test_val_token_accuracy_is_drawn_with_token_accuracy(seeds, monkeypatch):
    db, ids, store = seeds
    at = compare(open_app(monkeypatch, db), [ids["seed1"]])
    at.pills(key="metrics").set_value(["loss", "token_accuracy"]).run()
    accuracy = charts(at)["Token accuracy"]
    drawn = accuracy.frame("validation", ["run", "x", "value"]).sort_values("x")
    stored = store.epoch_values(ids["seed1"], "val_token_accuracy")
    assert list(drawn["x"]) == [float(n) for n in sorted(stored)]
    assert list(drawn["value"]) == pytest.approx([stored[n] for n in sorted(stored)])
    assert "validation_grad_norm" not in accuracy.datasets


def test_a_chart_without_a_held_out_counterpart_draws_no_validation_line(seeds,
                                                                        monkeypatch):
    db, ids, _ = seeds
    at = compare(open_app(monkeypatch, db), [ids["seed0"]])
    for chart in charts(at).values():
        if chart.metric != "loss":
            assert not layers_of(chart, f"validation_{chart.metric}")
    assert not math.isnan(charts(at)["Loss"].points["value"].iloc[0])
