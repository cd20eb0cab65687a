"""The Compare page's charts of several runs as one: validation curves beside their
training curve, and runs grouped by a config key or their tags (mean with a min-max band
over the members that have a value at each x)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from helpers.explorer import (
    APP,
    charts,
    chromium,
    compare,
    legend_opacity,
    open_app,
    scene_items,
    serving,
    tooltip_rows,
)
from helpers.tiny import tiny_config
from streamlit.testing.v1 import AppTest

from hlbd.runner import start_run
from hlbd.store import Store, buckets


@pytest.fixture(scope="module")
def seeds(databases, tmp_path_factory):
    """Real tiny runs: three of one config but for their seed (one of them trained an
    epoch less), tagged "sweep", one with another learning rate, tagged "probe", and one
    driven to NaN."""
    root = tmp_path_factory.mktemp("groups")
    db = databases.new(root)
    store = Store.open(db)

    def train(**overrides) -> str:
        return start_run(tiny_config(**overrides), store, runs_root=root / "runs",
                         progress=False).run_id

    ids = {"seed0": train(name="seed0", epochs=3, seed=0),
           "seed1": train(name="seed1", epochs=3, seed=1),
           "short": train(name="short", epochs=2, seed=2),
           "faster": train(name="faster", epochs=3, seed=0, lr=5e-3),
           # lr 1e8: its loss, and so its held-out loss, goes to NaN.
           "diverged": train(name="diverged", epochs=2, lr=1e8, max_grad_norm=0.0,
                             weight_decay=0.0)}
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


def test_a_nan_val_loss_is_a_validation_marker_never_a_drawn_number(seeds, monkeypatch):
    db, ids, store = seeds
    stored = store.epoch_values(ids["diverged"], "val_loss")
    nan_epochs = [n for n, v in stored.items() if not math.isfinite(v)]
    assert nan_epochs
    loss = charts(compare(open_app(monkeypatch, db), [ids["diverged"]]))["Loss"]
    marked = loss.nonfinite[loss.nonfinite["what"].str.startswith("validation")]
    assert sorted(marked["x"]) == [float(n) for n in sorted(nan_epochs)]
    assert set(marked["what"]) == {"validation loss (val_loss) is nan"}
    drawn = loss.frame("validation", ["run", "x", "value"])
    assert not set(drawn["x"]) & {float(n) for n in nan_epochs}


def test_a_chart_without_a_held_out_counterpart_draws_no_validation_line(seeds,
                                                                        monkeypatch):
    db, ids, _ = seeds
    at = compare(open_app(monkeypatch, db), [ids["seed0"]])
    for chart in charts(at).values():
        if chart.metric != "loss":
            assert not layers_of(chart, f"validation_{chart.metric}")
    assert not math.isnan(charts(at)["Loss"].points["value"].iloc[0])


# -- groups ---------------------------------------------------------------------------


def group_by(at, by: str, members: bool = False):
    at.selectbox(key="group_by").set_value(by).run()
    if members:
        at.toggle(key="group_members").set_value(True).run()
    assert not at.exception
    return at


def expected(values_by_run: dict[str, dict[float, float]]) -> dict[float, tuple]:
    """Per x: mean, min, max and count over the runs that have a value there."""
    xs = sorted({x for values in values_by_run.values() for x in values})
    out = {}
    for x in xs:
        there = [v[x] for v in values_by_run.values() if x in v]
        out[x] = (sum(there) / len(there), min(there), max(there), len(there))
    return out


def assert_drawn(points, group: str, values_by_run: dict) -> None:
    mine = points[points["run"] == group].sort_values("x")
    want = expected(values_by_run)
    assert list(mine["x"]) == list(want)
    assert list(mine["value"]) == pytest.approx([w[0] for w in want.values()])
    assert list(mine["lo"]) == pytest.approx([w[1] for w in want.values()])
    assert list(mine["hi"]) == pytest.approx([w[2] for w in want.values()])
    assert list(mine["n"]) == [w[3] for w in want.values()]


def test_runs_grouped_by_a_config_key_draw_the_mean_and_min_max_of_the_members_per_epoch(
        seeds, monkeypatch):
    db, ids, store = seeds
    order = ["seed0", "seed1", "short", "faster"]
    at = group_by(compare(open_app(monkeypatch, db), [ids[n] for n in order]), "config.lr")
    loss = charts(at)["Loss"]
    sweep = {n: {float(e["epoch"]): e["loss"] for e in store.epochs(ids[n])}
             for n in ("seed0", "seed1", "short")}
    assert_drawn(loss.points, "lr = 0.002", sweep)
    assert_drawn(loss.points, "lr = 0.005",
                 {"faster": {float(e["epoch"]): e["loss"] for e in store.epochs(ids["faster"])}})
    # Epoch 3: the run that stopped at epoch 2 is not counted, nor filled in.
    at3 = loss.points[(loss.points["run"] == "lr = 0.002") & (loss.points["x"] == 3.0)]
    assert int(at3["n"].iloc[0]) == 2
    assert at3["value"].iloc[0] == pytest.approx(
        (sweep["seed0"][3.0] + sweep["seed1"][3.0]) / 2)
    # One legend entry per group, in its first member's colour; no member line unasked.
    [line] = [m for m in loss.marks() if m["data"] == "points_loss" and m["type"] == "line"]
    scale = line["encoding"]["color"]["scale"]
    assert scale["domain"] == ["lr = 0.002", "lr = 0.005"]
    colours = dict(zip(scale["domain"], scale["range"]))
    ungrouped = compare(open_app(monkeypatch, db), [ids[n] for n in order])
    [run_line] = [m for m in charts(ungrouped)["Loss"].marks()
                  if m["data"] == "points_loss" and m["type"] == "line"]
    run_colours = dict(zip(run_line["encoding"]["color"]["scale"]["domain"],
                           run_line["encoding"]["color"]["scale"]["range"]))
    assert colours["lr = 0.002"] == run_colours[label(store, ids["seed0"])]
    assert colours["lr = 0.005"] == run_colours[label(store, ids["faster"])]
    assert "members_loss" not in loss.datasets
    # The band is drawn from the lowest to the highest member value.
    assert any(m["type"] == "area" and m["encoding"]["y"]["field"] == "lo"
               for m in loss.marks() if m["data"] == "points_loss")
    # The hover tells of how many runs each mean is.
    hover = loss.hover.set_index("x")
    assert hover.loc[3.0, "n0"] == 2 and hover.loc[2.0, "n0"] == 3
    tooltip = next(m for m in loss.marks() if m["data"] == "hover_loss"
                   and m["encoding"].get("tooltip"))["encoding"]["tooltip"]
    assert {"field": "n0", "type": "quantitative", "title": "lr = 0.002 · runs with a value",
            "format": "d"} in tooltip


def test_grad_norm_groups_span_their_members_lowest_and_highest_step(seeds, monkeypatch):
    db, ids, store = seeds
    at = group_by(compare(open_app(monkeypatch, db), [ids["seed0"], ids["seed1"]]),
                  "config.lr")
    norm = charts(at)["Gradient norm"].points
    epochs = {n: store.epochs(ids[n]) for n in ("seed0", "seed1")}
    for epoch in (1, 2, 3):
        rows = [e for n in epochs for e in epochs[n] if e["epoch"] == epoch]
        drawn = norm[norm["x"] == float(epoch)].iloc[0]
        assert drawn["value"] == pytest.approx(sum(e["grad_norm"] for e in rows) / 2)
        assert drawn["lo"] == pytest.approx(min(e["grad_norm_min"] for e in rows))
        assert drawn["hi"] == pytest.approx(max(e["grad_norm_max"] for e in rows))


def test_groups_on_the_step_axis_count_only_members_with_that_step(seeds, monkeypatch):
    db, ids, store = seeds
    members = ["seed0", "seed1", "short"]
    at = group_by(compare(open_app(monkeypatch, db), [ids[n] for n in members],
                          x_axis="step"), "tags")
    loss = charts(at)["Loss"]
    assert set(loss.points["run"]) == {"tags: sweep"}
    # Tiny runs are drawn a point per step (bucket width 1).
    steps = {n: {float(s["step"]): s["loss"] for s in store.steps(ids[n])} for n in members}
    assert_drawn(loss.points, "tags: sweep", steps)
    last_short = max(steps["short"])
    after = loss.points[loss.points["x"] > last_short]
    assert len(after) and set(after["n"]) == {2}


def test_groups_on_wall_time_say_that_members_seldom_share_a_time(seeds, monkeypatch):
    db, ids, store = seeds
    at = group_by(compare(open_app(monkeypatch, db), [ids["seed0"], ids["seed1"]],
                          x_axis="wall"), "config.lr")
    loss = charts(at)["Loss"]
    assert "Groups on wall time" in loss.subtitle
    # Each member's value is counted once, at its own time.
    assert loss.points["n"].sum() == sum(len(store.epochs(ids[n])) for n in ("seed0", "seed1"))


def test_members_are_drawn_on_demand_in_their_groups_colour(seeds, monkeypatch):
    db, ids, store = seeds
    at = group_by(compare(open_app(monkeypatch, db), [ids["seed0"], ids["faster"]]),
                  "tags", members=True)
    loss = charts(at)["Loss"]
    members = loss.frame("members", ["run", "member", "x", "value"])
    for name, group in (("seed0", "tags: sweep"), ("faster", "tags: probe")):
        mine = members[members["member"] == label(store, ids[name])].sort_values("x")
        assert set(mine["run"]) == {group}
        assert list(mine["value"]) == pytest.approx([e["loss"] for e in store.epochs(ids[name])])
    [line] = [m for m in loss.marks() if m["data"] == "members_loss"]
    [group_line] = [m for m in loss.marks() if m["data"] == "points_loss"
                    and m["type"] == "line"]
    assert line["encoding"]["color"] == group_line["encoding"]["color"]


def test_config_but_the_seed_makes_seeds_of_one_config_one_line(seeds, monkeypatch):
    db, ids, store = seeds
    at = group_by(compare(open_app(monkeypatch, db),
                          [ids["seed0"], ids["seed1"], ids["faster"]]), "config")
    loss = charts(at)["Loss"]
    assert set(loss.points["run"]) == {"lr = 0.002", "lr = 0.005"}
    # The held-out loss is grouped the same way (its mean, dashed).
    held = loss.frame("validation", ["run", "x", "value"])
    values = {n: store.epoch_values(ids[n], "val_loss") for n in ("seed0", "seed1")}
    mine = held[held["run"] == "lr = 0.002"].sort_values("x")
    assert list(mine["value"]) == pytest.approx(
        [(values["seed0"][n] + values["seed1"][n]) / 2 for n in (1, 2, 3)])
    # ... with a band from its members' lowest to highest held-out loss, as its line has.
    band = loss.frame("validation", ["run", "x", "lo", "hi"])
    band = band[band["run"] == "lr = 0.002"].sort_values("x")
    assert list(band["lo"]) == [min(values["seed0"][n], values["seed1"][n]) for n in (1, 2, 3)]
    assert list(band["hi"]) == [max(values["seed0"][n], values["seed1"][n]) for n in (1, 2, 3)]
    [area] = [m for m in layers_of(loss, "validation_loss") if m["type"] == "area"]
    assert (area["encoding"]["y"]["field"], area["encoding"]["y2"]["field"]) == ("lo", "hi")


def test_the_group_choice_is_in_the_link_and_a_link_reproduces_it(seeds, monkeypatch):
    db, ids, _ = seeds
    at = group_by(compare(open_app(monkeypatch, db), [ids["seed0"], ids["faster"]]),
                  "config.lr", members=True)
    assert at.query_params["group"] == "config.lr"
    assert at.query_params["members"] == "1"
    monkeypatch.setenv("HLBD_DB", str(db))
    again = AppTest.from_file(str(APP), default_timeout=60)
    for key, value in at.query_params.items():
        again.query_params[key] = value[0] if isinstance(value, list) else value
    again.run()
    again.switch_page("views/compare.py").run()
    assert not again.exception
    assert again.selectbox(key="group_by").value == "config.lr"
    assert set(charts(again)["Loss"].points["run"]) == {"lr = 0.002", "lr = 0.005"}
    assert "members_loss" in charts(again)["Loss"].datasets


def chart_hidden(at) -> list[str]:
    """The legend entries the chart element tells the browser to hide when it shows."""
    element = next(e for e in at.get("bidi_component")
                   if e.proto.component_name == "hlbd_chart" and e.proto.HasField("mixed"))
    return json.loads(element.proto.mixed.json)["hidden"]


def test_a_group_hidden_in_the_legend_is_in_the_link_and_a_link_hides_it(seeds,
                                                                        monkeypatch):
    db, ids, store = seeds
    at = group_by(compare(open_app(monkeypatch, db), [ids["seed0"], ids["faster"]]),
                  "config.lr")
    # The legend hid a group (the component's state, as the browser says it).
    at.session_state["charts"] = {"hidden": ["lr = 0.005"]}
    at.run()
    assert at.query_params["hideg"] == "lr = 0.005"
    again = AppTest.from_file(str(APP), default_timeout=60)
    for key, value in at.query_params.items():
        again.query_params[key] = value[0] if isinstance(value, list) else value
    again.query_params["hideg"] += "|no such group"   # ignored, not guessed
    again.switch_page("views/compare.py").run()
    assert not again.exception
    assert chart_hidden(again) == ["lr = 0.005"]
    assert again.query_params["hideg"] == "lr = 0.005"
    # A run hidden before the grouping stays in the link beside it; ungrouped, the
    # link holds the runs again and no groups.
    again.session_state["charts"] = {"hidden": [label(store, ids["seed0"]), "lr = 0.005"]}
    again.run()
    assert (again.query_params["hide"], again.query_params["hideg"]) == (
        ids["seed0"][:8], "lr = 0.005")
    group_by(again, "")
    assert again.query_params["hide"] == ids["seed0"][:8]
    assert "hideg" not in again.query_params


# -- groups.py on its own (small runs written out by hand) ----------------------------


@pytest.fixture
def groups_module(monkeypatch):
    """app/groups.py, imported as Streamlit imports it (app/ on sys.path)."""
    monkeypatch.syspath_prepend(str(APP.parent))
    import groups

    return groups


def test_a_group_line_is_over_the_members_with_a_value_and_breaks_where_none_has(
        groups_module):
    g = groups_module
    grouping = g.Grouping(by="config.lr", of=(("a", "A"), ("b", "A"), ("c", "C")),
                          colors=(("A", "#111111"), ("C", "#222222")))
    values = pd.DataFrame({"run": ["a", "b", "a", "a", "c"], "x": [1.0, 1.0, 2.0, 4.0, 1.0],
                           "value": [2.0, 4.0, 3.0, 5.0, 7.0],
                           "lo": [1.5, None, None, None, None],
                           "hi": [2.5, None, None, None, None]})
    # b has a place at 2 but no value (not counted); at 3 neither has one: a break.
    gaps = pd.DataFrame({"run": ["b", "a", "b"], "x": [2.0, 3.0, 3.0]})
    lines = g.aggregate(values, gaps, grouping)
    a = lines[lines["run"] == "A"].set_index("x")
    assert list(a.index) == [1.0, 2.0, 4.0]
    assert list(a["value"]) == [3.0, 3.0, 5.0]      # (2 + 4) / 2; a alone; a alone
    assert list(a["lo"]) == [1.5, 3.0, 5.0]         # a's bucket min at 1, then values
    assert list(a["hi"]) == [4.0, 3.0, 5.0]
    assert list(a["n"]) == [2, 1, 1]
    assert a.loc[2.0, "piece"] != a.loc[4.0, "piece"]   # no line across x = 3
    assert a.loc[1.0, "piece"] == a.loc[2.0, "piece"]
    assert list(lines[lines["run"] == "C"]["value"]) == [7.0]


def test_groups_are_named_by_the_key_the_tags_or_what_their_configs_differ_in(
        groups_module):
    g = groups_module
    runs = [{"run_id": "1", "tags": ["b", "a"], "config": {"lr": 0.002, "seed": 0}},
            {"run_id": "2", "tags": [], "config": {"lr": 0.002, "seed": 1}},
            {"run_id": "3", "tags": ["a"], "config": {"lr": 0.005, "seed": 0,
                                                      "name": "x"}},
            {"run_id": "4", "tags": None, "config": {}}]
    assert g.names(runs, "config.lr") == {"1": "lr = 0.002", "2": "lr = 0.002",
                                          "3": "lr = 0.005", "4": "lr not recorded"}
    assert g.names(runs, "tags") == {"1": "tags: a, b", "2": "no tags", "3": "tags: a",
                                     "4": "no tags"}
    assert g.names(runs, "config") == {"1": "lr = 0.002", "2": "lr = 0.002",
                                       "3": "lr = 0.005", "4": "lr = not recorded"}
    assert g.choices(runs) == ["", "config", "tags", "config.lr", "config.name",
                               "config.seed"]


def test_colour_by_tags_gives_runs_with_the_same_tags_one_colour(seeds, monkeypatch):
    db, ids, store = seeds
    picked = [ids["seed0"], ids["short"], ids["faster"]]
    at = compare(open_app(monkeypatch, db), picked)
    at.toggle(key="tag_colors").set_value(True).run()
    assert not at.exception
    assert at.query_params["colors"] == "tags"
    [line] = [m for m in charts(at)["Loss"].marks()
              if m["data"] == "points_loss" and m["type"] == "line"]
    scale = line["encoding"]["color"]["scale"]
    colour = dict(zip(scale["domain"], scale["range"]))
    assert len(scale["domain"]) == 3   # still a line and a legend entry per run
    assert colour[label(store, ids["seed0"])] == colour[label(store, ids["short"])]
    assert colour[label(store, ids["faster"])] != colour[label(store, ids["seed0"])]


# -- in the browser -------------------------------------------------------------------


@pytest.mark.browser
def test_a_grouped_link_draws_groups_and_the_hover_says_of_how_many_runs(seeds, tmp_path):
    db, ids, store = seeds
    with serving(db) as url, chromium() as browser:
        picked = ",".join(ids[n][:8] for n in ("seed0", "seed1", "short", "faster"))
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/compare?runs={picked}&group=config.lr"
                  "&members=1")
        page.wait_for_function("() => document.querySelector('.vega-embed')?.hlbdView",
                               timeout=60_000)
        legend = legend_opacity(page)
        assert {"lr = 0.002", "lr = 0.005", "validation (held out)"} <= set(legend)
        assert not any(label(store, i) in legend for i in ids.values())
        # Epoch 3: the run that stopped at epoch 2 is not in the mean.
        bands = scene_items(page, "hover_loss")
        last = max(bands, key=lambda b: b["datum"]["x"])
        page.mouse.move(last["x"], last["y"])
        _, rows = tooltip_rows(page)
        names = [name for name, _ in rows]
        assert "lr = 0.002 (mean of 2)" in names and "lr = 0.005 (mean of 1)" in names
        assert "lr = 0.002 · validation" in names
        page.screenshot(path=tmp_path / "grouped.png", full_page=True)
        assert errors == []
