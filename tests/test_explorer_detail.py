"""The explorer's run detail page (tags, notes, status history, evaluations, flags linked
to the charts, any series the run has) and its Hyperparameters page (exact match per
module side by side, parallel coordinates, scatter, brushing), through AppTest on a
database written by real tiny runs."""

from __future__ import annotations

import json
import math
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
from click.testing import CliRunner
from helpers.explorer import (
    APP,
    charts,
    chromium,
    open_app,
    serving,
    sidebar_picks,
)
from helpers.tiny import tiny_config
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from hlbd import importer
from hlbd.cli import main
from hlbd.data import BUNDLED
from hlbd.runner import resume_run, start_run
from hlbd.store import Store


@pytest.fixture(scope="module")
def detailed(databases, tmp_path_factory):
    """Real tiny runs: two tagged and noted, one evaluated with `hlbd eval`, one resumed,
    one whose gradients explode (flags with steps), and one imported from an older
    tool's report that kept a list hlbd cannot place (``autopoietic_losses``)."""
    root = tmp_path_factory.mktemp("detail")
    db = databases.new(root)
    store = Store.open(db)

    def train(**overrides) -> str:
        return start_run(tiny_config(**overrides), store, runs_root=root / "runs",
                         progress=False).run_id

    ids = {"baseline": train(name="baseline", epochs=3),
           "faster": train(name="faster", epochs=3, lr=5e-3, d_model=48),
           "exploding": train(name="exploding", epochs=2, lr=50.0, max_grad_norm=0.0),
           "resumed": train(name="resumed", epochs=2, save_interval=1)}
    resume_run(store, ids["resumed"], epochs=3, progress=False)
    store.tag(ids["baseline"], ["tiny", "reference"])
    store.note(ids["baseline"], "The run the others are measured against.")
    evaluated = CliRunner().invoke(main, ["eval", "--db", str(db), "--run-id",
                                          ids["baseline"], "--dataset", BUNDLED,
                                          "--max-pairs", "6"])
    assert evaluated.exit_code == 0, evaluated.output
    # An older tool's report: the baseline's measured epoch losses, and its measured
    # step losses under a name of that tool's own that hlbd cannot place.
    report = json.loads((root / "runs" / ids["baseline"] / "experiment_report.json")
                        .read_text())
    old = {"control_losses": report["control_losses"],
           "autopoietic_losses": report["batch_losses"], "timestamp": 1_767_225_600.0}
    (root / "old" / "exp").mkdir(parents=True)
    (root / "old" / "exp" / "experiment_report.json").write_text(json.dumps(old))
    [imported] = importer.import_reports(store, root / "old", name="old-report")
    ids["imported"] = imported.run_id
    yield db, ids, store
    store.close()
    databases.drop(db)


def detail(monkeypatch, db, run_id: str) -> AppTest:
    at = open_app(monkeypatch, db)
    at.switch_page("views/run.py").run()
    at.selectbox(key="detail_run").set_value(run_id).run()
    assert not at.exception
    return at


def table_with(at: AppTest, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


# -- run detail -------------------------------------------------------------------------


def test_run_detail_shows_the_runs_tags_and_notes(detailed, monkeypatch):
    db, ids, store = detailed
    run = store.get_run(ids["baseline"])
    at = detail(monkeypatch, db, ids["baseline"])
    [tags] = [m.value for m in at.markdown if m.value.startswith("Tags:")]
    assert tags == "Tags: " + " ".join(f"`{t}`" for t in run["tags"])
    assert [t.value for t in at.text] == [run["notes"]]
    # A run without either says so.
    at.selectbox(key="detail_run").set_value(ids["faster"]).run()
    assert any(m.value == "Tags: none" for m in at.markdown)
    assert not at.text and any(c.value.startswith("Notes: none") for c in at.caption)


def test_status_history_says_start_or_resume_and_the_last_heartbeat(detailed, monkeypatch):
    db, ids, store = detailed
    run, segments = store.get_run(ids["resumed"]), store.segments(ids["resumed"])
    at = detail(monkeypatch, db, ids["resumed"])
    history = table_with(at, "start epoch")
    assert history["what"].tolist() == ["start"] + ["resume"] * (len(segments) - 1)
    assert history["resumed from"].tolist()[1:] == [s["resumed_from"] for s in segments[1:]]
    beats = history["last heartbeat (UTC)"].tolist()
    assert all(pd.isna(b) for b in beats[:-1])
    assert beats[-1] == pd.Timestamp(run["heartbeat_at"])
    # An imported run's first segment is the import: no heartbeat of its own.
    history = table_with(detail(monkeypatch, db, ids["imported"]), "start epoch")
    assert history["what"].tolist() == ["import"]
    assert pd.isna(history["last heartbeat (UTC)"].iloc[0])


def test_run_detail_lists_its_evaluations_with_checkpoint_file_hash_and_values(
        detailed, monkeypatch):
    db, ids, store = detailed
    [evaluation] = store.evaluations(ids["baseline"])
    at = detail(monkeypatch, db, ids["baseline"])
    shown = table_with(at, "dataset sha256")
    assert len(shown) == 1
    row = shown.iloc[0]
    assert row["checkpoint"] == evaluation["checkpoint"]
    assert row["checkpoint epoch"] == evaluation["checkpoint_epoch"]
    assert row["dataset"] == evaluation["dataset"]
    assert row["dataset sha256"] == evaluation["dataset_sha256"]
    assert row["evaluated (UTC)"] == pd.Timestamp(evaluation["evaluated_at"])
    assert evaluation["values"]
    for name, value in evaluation["values"].items():
        assert row[name] == pytest.approx(value, nan_ok=True)
    # A run never evaluated says how to evaluate it.
    at.selectbox(key="detail_run").set_value(ids["faster"]).run()
    assert not any("dataset sha256" in d.value.columns for d in at.dataframe)
    assert any(c.value.startswith("No evaluations recorded") for c in at.caption)


def test_a_flag_links_to_compare_on_its_run_zoomed_around_its_step(detailed, monkeypatch):
    db, ids, store = detailed
    run_id = ids["exploding"]
    at = detail(monkeypatch, db, run_id)
    flags = table_with(at, "rule")
    stepped = flags[flags["step"].notna()]
    assert len(stepped)
    per_epoch = max(e["steps"] for e in store.epochs(run_id))
    for step, href in zip(stepped["step"], stepped["on the charts"], strict=True):
        target = urlsplit(href)
        assert target.path == "compare"
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        assert run_id.startswith(query["runs"]) and query["x"] == "step"
        low, high = map(float, query["range"].split(","))
        assert low < step < high and high - low <= 2 * per_epoch
    # The link opens Compare on that run, step axis, zoomed there, the flag drawn.
    step, href = stepped["step"].iloc[0], stepped["on the charts"].iloc[0]
    monkeypatch.setenv("HLBD_DB", str(db))
    linked = AppTest.from_file(str(APP), default_timeout=60)
    query = {k: v[0] for k, v in parse_qs(urlsplit(href).query).items()}
    low, high = map(float, query["range"].split(","))
    linked.query_params.update(query)
    linked.run()
    linked.switch_page("views/compare.py").run()
    assert not linked.exception
    assert linked.session_state["picked"] == [run_id]
    assert linked.button_group(key="x_axis").value == "step"
    drawn = charts(linked)
    assert step in set(drawn["Gradient norm"].flags["x"])
    xs = drawn["Loss"].points["x"]
    assert xs.min() >= low and xs.max() <= high


def test_every_series_the_run_has_can_be_charted_on_its_page(detailed, monkeypatch):
    db, ids, store = detailed
    run_id = ids["baseline"]
    keys = {p["key"] for p in store.point_series(run_id)}
    assert {"val_loss", "sys/rss_bytes", "val/exact"} <= keys
    at = detail(monkeypatch, db, run_id)
    picker = at.multiselect(key="detail_series")
    assert keys <= set(picker.options)  # shown by their names
    picker.set_value(["loss", "p:val_loss", "p:sys/rss_bytes"]).run()
    assert not at.exception
    drawn = charts(at)
    assert list(drawn) == ["Loss", "val_loss", "sys/rss_bytes"]
    for key in ("val_loss", "sys/rss_bytes"):
        points = drawn[key].points.sort_values("x")
        stored = store.epoch_values(run_id, key)
        assert points["x"].tolist() == list(stored)
        assert points["value"].tolist() == pytest.approx(list(stored.values()))


def test_an_imported_list_is_charted_by_its_position_in_the_list(detailed, monkeypatch):
    db, ids, store = detailed
    kept = store.get_run(ids["imported"])["extra"]["report"]["autopoietic_losses"]
    at = detail(monkeypatch, db, ids["imported"])
    at.multiselect(key="detail_series").set_value(
        ["extra:report/autopoietic_losses"]).run()
    assert not at.exception
    [chart] = at.get("vega_lite_chart")
    frame = convert_arrow_bytes_to_pandas_df(chart.proto.datasets[0].data.data)
    assert frame["position in the list"].tolist() == list(range(1, len(kept) + 1))
    assert frame["value"].tolist() == pytest.approx(kept, nan_ok=True)
    assert any("report/autopoietic_losses" in m.value for m in at.markdown)


# -- hyperparameters --------------------------------------------------------------------


def label(store, run_id: str) -> str:
    return f"{store.get_run(run_id)['name']} · {run_id[:8]}"


def params_page(monkeypatch, db, picked: list[str]) -> AppTest:
    at = open_app(monkeypatch, db)
    at.sidebar.multiselect(key="picked").set_value(picked).run()
    at.switch_page("views/params.py").run()
    assert not at.exception
    return at


def test_exact_match_per_module_of_the_picked_runs_side_by_side_at_best_and_last_epoch(
        detailed, monkeypatch):
    db, ids, store = detailed
    picked = [ids["baseline"], ids["faster"], ids["imported"]]
    at = params_page(monkeypatch, db, picked)
    for at_epoch in ("best", "last"):
        at.button_group(key="exact_at").set_value(at_epoch).run()
        table = table_with(at, label(store, ids["baseline"]))
        assert list(table.columns) == [label(store, i) for i in picked]
        for run_id in picked[:2]:
            keys = [p["key"] for p in store.point_series(run_id)
                    if p["key"] == "val/exact" or p["key"].startswith("val/exact/")]
            assert len(keys) > 1 and set(keys) <= set(table.index)
            val_loss = store.epoch_values(run_id, "val_loss")
            epoch = (min(val_loss, key=val_loss.get) if at_epoch == "best"
                     else max(store.epoch_values(run_id, "val/exact")))
            column = table[label(store, run_id)]
            assert column["epoch"] == epoch
            for key in keys:
                assert column[key] == pytest.approx(store.epoch_values(run_id, key)[epoch])
        # The imported run recorded none of them: not recorded, never zero.
        assert table[label(store, ids["imported"])].isna().all()
    assert table.index[1] == "val/exact"


def chart_frames(at: AppTest) -> list[pd.DataFrame]:
    """The data of the page's st.vega_lite_chart charts, in page order."""
    return [convert_arrow_bytes_to_pandas_df(
        c.proto.data.data if c.proto.HasField("data") else c.proto.datasets[0].data.data)
            for c in at.get("vega_lite_chart")]


def same(shown, stored) -> bool:
    """A shown value is the stored one; missing where the store has none."""
    return pd.isna(shown) if stored is None else shown == pytest.approx(stored, nan_ok=True)


def test_parallel_coordinates_draw_each_runs_config_and_summaries(detailed, monkeypatch):
    db, ids, store = detailed
    at = params_page(monkeypatch, db, [ids["faster"]])
    axes = at.multiselect(key="parallel_axes")
    # By default the config keys that differ between runs, then the summaries.
    assert {"lr", "d_model"} <= set(axes.value) and "n_layers" not in axes.value
    assert axes.value[-2:] == ["best val loss", "last loss"]
    axes.set_value(["lr", "d_model", "best val loss"]).run()
    parallel = chart_frames(at)[0]
    listed = {r["run_id"]: r for r in store.list_runs()}
    for run_id, run in listed.items():
        mine = parallel[parallel["run"] == run_id].set_index("axis")
        assert same(mine.loc["lr", "value"], run["config"].get("lr"))
        assert same(mine.loc["d_model", "value"], run["config"].get("d_model"))
        assert same(mine.loc["best val loss", "value"], run["best_val_loss"])
        assert bool(mine["picked"].all()) == (run_id == ids["faster"])
    # The imported run has no config: no place on those axes (not a made-up 0).
    imported = parallel[parallel["run"] == ids["imported"]].set_index("axis")
    assert imported[["value", "norm"]].loc["lr"].isna().all()
    # Each axis runs from its lowest value (0) to its highest (1).
    lr = parallel[parallel["axis"] == "lr"].dropna(subset=["norm"])
    assert lr.loc[lr["value"].idxmin(), "norm"] == 0 and lr.loc[lr["value"].idxmax(),
                                                                 "norm"] == 1


def test_a_brush_on_the_scatter_offers_to_pick_the_runs_it_covers(detailed, monkeypatch):
    db, ids, store = detailed
    at = params_page(monkeypatch, db, [])
    at.selectbox(key="scatter_x").set_value("lr").run()
    at.selectbox(key="scatter_y").set_value("last loss").run()
    scatter = chart_frames(at)[1]
    listed = {r["run_id"]: r for r in store.list_runs()}
    for row in scatter.itertuples():
        assert row.x == pytest.approx(listed[row.run]["config"]["lr"])
        assert row.y == pytest.approx(listed[row.run]["last_loss"])
    # The imported run has no lr: not drawn, and said so.
    assert ids["imported"] not in set(scatter["run"])
    assert any("are not drawn" in c.value for c in at.caption)
    # A brush around the runs of the lowest lr (as the browser reports it) ...
    low = scatter["x"].min()
    covered = scatter[scatter["x"] == low]
    at.session_state["scatter"] = {"selection": {"brush": {
        "x": [low * 0.99, low * 1.01], "y": [covered["y"].min() - 1e-9,
                                            covered["y"].max() + 1e-9]}}}
    at.run()
    assert not at.exception
    button = next(b for b in at.button if b.key == "pick_scatter")
    assert button.label == f"Pick these {len(covered)} runs"
    button.click().run()
    # ... makes them the sidebar's picked runs.
    assert sorted(at.session_state["picked"]) == sorted(covered["run"])


# -- the pages' pure functions ----------------------------------------------------------


@pytest.fixture
def app_modules(monkeypatch):
    """app/hyperparams.py and app/extra_series.py, imported as Streamlit imports them."""
    monkeypatch.syspath_prepend(str(APP.parent))
    import extra_series
    import hyperparams

    return hyperparams, extra_series


def test_exact_names_put_overall_first_then_modules_then_levels_by_number(app_modules):
    hyperparams, _ = app_modules
    keys = ["val/exact/level_10", "val_loss", "val/exact/zodiac", "val/exact/level_2",
            "val/exact", "val/exact/arithmetic"]
    assert hyperparams.exact_keys(keys) == [
        "val/exact", "val/exact/arithmetic", "val/exact/zodiac", "val/exact/level_2",
        "val/exact/level_10"]


def test_the_best_epoch_is_the_lowest_finite_val_loss_and_none_without_one(app_modules):
    hyperparams, _ = app_modules
    assert hyperparams.best_epoch({1: 2.0, 2: math.nan, 3: 1.5, 4: 1.5}) == 3
    assert hyperparams.best_epoch({1: math.nan}) is None
    assert hyperparams.best_epoch({}) is None


def test_parallel_rows_place_values_between_each_axis_extremes_and_leave_gaps(app_modules):
    hyperparams, _ = app_modules
    rows = hyperparams.parallel_rows({"a": {"lr": 0.1, "loss": 2.0},
                                      "b": {"lr": 0.3, "loss": math.nan},
                                      "c": {"lr": 0.2}}, ["lr", "loss"])
    norm = {(r["run"], r["axis"]): r["norm"] for r in rows}
    assert norm[("a", "lr")] == 0 and norm[("b", "lr")] == 1
    assert norm[("c", "lr")] == pytest.approx(0.5)
    assert norm[("a", "loss")] == 0.5   # one value: the middle, nothing to spread
    assert norm[("b", "loss")] is None and norm[("c", "loss")] is None


def test_a_brush_covers_a_run_when_one_of_its_points_lies_inside_on_every_field(
        app_modules):
    hyperparams, _ = app_modules
    rows = [{"run": "a", "x": 0, "norm": 0.9}, {"run": "a", "x": 1, "norm": 0.1},
            {"run": "b", "x": 0, "norm": 0.2}, {"run": "b", "x": 1, "norm": None},
            {"run": "c", "x": 0, "norm": math.nan}]
    assert hyperparams.brushed({"x": [-0.2, 0.2], "norm": [0.5, 1.0]}, rows) == ["a"]
    assert hyperparams.brushed({"x": [-0.2, 1.2], "norm": [0.0, 0.3]}, rows) == ["a", "b"]
    assert hyperparams.brushed({}, rows) == [] and hyperparams.brushed(None, rows) == []


def test_numeric_config_joins_nested_keys_and_leaves_text_and_flags_out(app_modules):
    hyperparams, _ = app_modules
    config = {"lr": 0.002, "epochs": 3, "amp": True, "name": "x", "val_dataset": None,
              "split": {"fraction": 0.1, "held_out_by_stratum": {"zodiac": 1}}}
    assert hyperparams.numeric_config(config) == {
        "lr": 0.002, "epochs": 3.0, "split/fraction": 0.1,
        "split/held_out_by_stratum/zodiac": 1.0}


def test_extra_series_are_the_lists_of_numbers_at_any_depth(app_modules):
    _, extra_series = app_modules
    extra = {"report": {"autopoietic_losses": [2.5, None, 1.0], "notes": ["a", "b"],
                        "current_epoch": 3, "flags": [True, False]},
             "batch_losses": [1, 2]}
    assert extra_series.extra_series(extra) == {
        "report/autopoietic_losses": [2.5, None, 1.0], "batch_losses": [1.0, 2.0]}
    assert extra_series.counts([2.5, None, math.nan, math.inf]) == (1, 2)


# -- in the browser ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_detail(detailed):
    """The explorer served with `streamlit run` on the detailed database."""
    db, ids, store = detailed
    with serving(db) as url:
        yield url, ids, store


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def drag(page, box: dict, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag across ``box`` from and to these fractions of its width and height."""
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"],
                    steps=12)
    page.mouse.up()


@pytest.mark.browser
@pytest.mark.parametrize("chart, start, end", [
    (0, (0.05, 0.4), (0.45, 0.97)),     # parallel coordinates: the first axes' lower half
    (1, (0.97, 0.7), (0.0, 0.0)),       # scatter: from its plot's corner over all of it
])
def test_a_brush_in_the_browser_picks_the_runs_it_covers(served_detail, browser, chart,
                                                         start, end):
    url, _, store = served_detail
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        page.goto(f"{url}/params")
        charts_drawn = page.get_by_test_id("stVegaLiteChart")
        charts_drawn.nth(1).wait_for(timeout=60_000)
        page.wait_for_timeout(1500)  # let Vega finish drawing
        charts_drawn.nth(chart).scroll_into_view_if_needed()
        drag(page, charts_drawn.nth(chart).bounding_box(), start, end)
        said = page.get_by_text("Brushed ")
        said.wait_for(timeout=60_000)
        names = sorted(n.split(" · ")[0] for n in
                       said.inner_text().split(": ", 1)[1].split(", "))
        known = {r["name"] for r in store.list_runs()}
        assert names and set(names) <= known
        page.get_by_role("button", name=f"Pick these {len(names)} runs").click()
        for _ in range(300):
            if sidebar_picks(page) == names:
                break
            page.wait_for_timeout(200)
        assert sidebar_picks(page) == names
    finally:
        page.close()


def test_a_hyperparameters_link_reproduces_its_controls_and_follows_changes(detailed,
                                                                          monkeypatch):
    db, ids, _ = detailed
    view = {"runs": ids["faster"][:8], "at": "last", "axes": "lr,best val loss",
            "sx": "lr", "sy": "last loss", "slog": "1"}
    monkeypatch.setenv("HLBD_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(view)
    at.switch_page("views/params.py").run()  # the link opens that page
    assert not at.exception
    assert at.button_group(key="exact_at").value == "last"
    assert at.multiselect(key="parallel_axes").value == ["lr", "best val loss"]
    assert at.selectbox(key="scatter_x").value == "lr"
    assert at.selectbox(key="scatter_y").value == "last loss"
    assert at.toggle(key="scatter_log").value is True
    assert dict(at.query_params) == view  # the page writes back what it shows
    # Changed on the page: the link follows; back at a default, it leaves the link.
    at.toggle(key="scatter_log").set_value(False).run()
    at.button_group(key="exact_at").set_value("best").run()
    at.selectbox(key="scatter_y").set_value("best loss").run()
    assert dict(at.query_params) == {"runs": ids["faster"][:8], "axes": "lr,best val loss",
                                     "sx": "lr", "sy": "best loss"}
    # What the page cannot show is ignored, not guessed.
    odd = AppTest.from_file(str(APP), default_timeout=60)
    odd.query_params.update({"runs": ids["faster"][:8], "at": "worst", "axes": "nope",
                             "sx": "nope", "sy": "nope"})
    odd.switch_page("views/params.py").run()
    assert not odd.exception
    assert odd.button_group(key="exact_at").value == "best"
    assert "nope" not in odd.multiselect(key="parallel_axes").value
    assert odd.multiselect(key="parallel_axes").value[-2:] == ["best val loss", "last loss"]
    assert odd.selectbox(key="scatter_y").value == next(iter(
        at.selectbox(key="scatter_y").options))


def test_the_scatter_has_a_log_y_for_an_exploded_run(detailed, monkeypatch):
    db, _, store = detailed
    at = params_page(monkeypatch, db, [])
    at.selectbox(key="scatter_y").set_value("best loss").run()
    linear = json.loads(at.get("vega_lite_chart")[1].proto.spec)
    assert linear["encoding"]["y"]["scale"].get("type") is None
    at.toggle(key="scatter_log").set_value(True).run()
    spec = json.loads(at.get("vega_lite_chart")[1].proto.spec)
    assert spec["encoding"]["y"]["scale"]["type"] == "log"
    drawn = chart_frames(at)[1].set_index("run")["y"]
    x_key = at.selectbox(key="scatter_x").value
    positive = {r["run_id"]: r["best_loss"] for r in store.list_runs()
                if r["config"].get(x_key) is not None and r["best_loss"] is not None
                and math.isfinite(r["best_loss"]) and r["best_loss"] > 0}
    assert dict(drawn) == pytest.approx(positive)
