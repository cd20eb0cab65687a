"""The explorer (app/main.py) driven through AppTest on databases written by real runs."""

from __future__ import annotations

import math

import pytest
from conftest import sqlite_only, tiny_config
from explorer_helpers import charts, compare, open_app

from hlbd import database
from hlbd.anomalies import detect
from hlbd.runner import resume_run, start_run
from hlbd.store import Store


@pytest.fixture(scope="module")
def explored(databases, tmp_path_factory):
    """A database with real tiny runs: two ordinary ones, one whose gradients explode,
    one that diverges to NaN, one resumed, and one imported without grad norms or LR."""
    root = tmp_path_factory.mktemp("explorer")
    db = databases.new(root)
    store = Store.open(db)

    def train(**overrides) -> str:
        return start_run(tiny_config(**overrides), store, runs_root=root / "runs",
                         progress=False).run_id

    ids = {
        "baseline": train(name="baseline", epochs=3),
        "faster": train(name="faster", epochs=3, lr=5e-3),
        "exploding": train(name="exploding", epochs=3, lr=50.0, max_grad_norm=0.0),
        "diverged": train(name="diverged", epochs=2, lr=1e8, max_grad_norm=0.0,
                          weight_decay=0.0),
        "resumed": train(name="resumed", epochs=2, save_interval=1),
    }
    resume_run(store, ids["resumed"], epochs=3, progress=False)
    # An old report kept losses only: the baseline's real losses, nothing else.
    ids["imported"] = store.create_run("old-report", {"lr": 2e-3}, {"old.json": 143},
                                       source="imported", status="finished")
    for e in store.epochs(ids["baseline"]):
        store.record_epoch(ids["imported"], 1, {"epoch": e["epoch"], "loss": e["loss"],
                                                "grad_norm": None, "lr": None})
    yield db, ids, store
    store.close()
    databases.drop(db)


def test_runs_table_lists_every_run_with_status_epochs_and_losses(explored, monkeypatch):
    db, ids, store = explored
    at = open_app(monkeypatch, db)
    assert not at.exception
    table = at.dataframe[0].value.set_index("id")
    assert set(table.index) == set(ids.values())
    for run in store.list_runs():
        row = table.loc[run["run_id"]]
        assert row["name"] == run["name"]
        assert row["status"] == run["display_status"] == "finished"
        assert row["epochs"] == run["epochs"]
        assert row["datasets"] == ", ".join(run["dataset_stats"])
        losses = [e["loss"] for e in store.epochs(run["run_id"])]
        assert float(row["last loss"]) == pytest.approx(losses[-1], rel=1e-5, nan_ok=True)
        finite = [v for v in losses if math.isfinite(v)] or [math.nan]
        assert float(row["best loss"]) == pytest.approx(min(finite), rel=1e-5, nan_ok=True)
    # A measured NaN shows as NaN; a value never recorded says so (never 0, never blank).
    assert table.loc[ids["diverged"], "last loss"] == "nan"
    assert table.loc[ids["imported"], "max grad norm"] == "not recorded"


def test_filters_narrow_the_runs_table_by_text_and_status(explored, monkeypatch):
    db, ids, _ = explored
    at = open_app(monkeypatch, db)
    at.text_input(key="text_filter").set_value("old.json").run()
    assert at.dataframe[0].value["id"].tolist() == [ids["imported"]]
    at.text_input(key="text_filter").set_value("").run()
    at.multiselect(key="status_filter").set_value([]).run()
    assert at.dataframe[0].value.empty


def test_comparing_two_runs_draws_loss_grad_norm_and_lr_one_point_per_epoch(explored,
                                                                             monkeypatch):
    db, ids, store = explored
    picked = [ids["baseline"], ids["faster"]]
    at = compare(open_app(monkeypatch, db), picked)
    assert not at.exception
    drawn = charts(at)
    assert list(drawn) == ["Loss", "Gradient norm", "Learning rate"]
    for title, column in [("Loss", "loss"), ("Gradient norm", "grad_norm"),
                          ("Learning rate", "lr")]:
        points = drawn[title].points
        for run_id in picked:
            epochs = store.epochs(run_id)
            mine = points[points["run"].str.endswith(run_id[:8])].sort_values("x")
            assert mine["x"].tolist() == [e["epoch"] for e in epochs]
            assert mine["value"].tolist() == pytest.approx([e[column] for e in epochs])
            # The tooltip text is the stored number itself, every digit of it.
            assert [float(v) for v in mine["exact"]] == [e[column] for e in epochs]
    band = drawn["Gradient norm"].points
    epochs = store.epochs(ids["baseline"])
    mine = band[band["run"].str.endswith(ids["baseline"][:8])].sort_values("x")
    assert mine["hi"].tolist() == pytest.approx([e["grad_norm_max"] for e in epochs])
    assert mine["lo"].tolist() == pytest.approx([e["grad_norm_min"] for e in epochs])


def test_step_axis_draws_every_recorded_step_of_short_runs(explored, monkeypatch):
    db, ids, store = explored
    picked = [ids["baseline"], ids["faster"]]
    at = compare(open_app(monkeypatch, db), picked, x_axis="step")
    loss = charts(at)["Loss"].points
    for run_id in picked:
        steps = store.steps(run_id)
        mine = loss[loss["run"].str.endswith(run_id[:8])].sort_values("x")
        assert mine["x"].tolist() == [s["step"] for s in steps]
        assert mine["value"].tolist() == pytest.approx([s["loss"] for s in steps])


def test_wall_time_axis_uses_when_each_epoch_was_recorded(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"]], x_axis="wall")
    drawn = charts(at)["Loss"]
    run = store.get_run(ids["baseline"])
    elapsed = [(e["recorded_at"] - run["created_at"]).total_seconds()
               for e in store.epochs(ids["baseline"])]
    assert "wall time" in drawn.spec["layer"][0]["layer"][0]["encoding"]["x"]["title"]
    assert drawn.points.sort_values("x")["x"].tolist() == pytest.approx(elapsed)


def test_exploding_gradients_are_flagged_in_the_table_and_on_the_chart(explored,
                                                                      monkeypatch):
    db, ids, store = explored
    run_id = ids["exploding"]
    epochs = store.epochs(run_id)
    assert max(e["grad_norm_max"] for e in epochs) > 10  # the real norms did explode
    expected = detect(store.get_run(run_id), epochs)
    at = open_app(monkeypatch, db)
    table = at.dataframe[0].value.set_index("id")
    assert table.loc[run_id, "anomalies"] == len(expected) > 0
    assert table.loc[ids["baseline"], "anomalies"] == 0
    at = compare(at, [run_id, ids["baseline"]])
    flags = charts(at)["Gradient norm"].flags
    assert "grad_explosion" in set(flags["rule"])
    assert set(flags["run"]) == {f"exploding · {run_id[:8]}"}
    listed = at.dataframe[0].value
    assert sorted(listed["rule"]) == sorted(f["rule"] for f in expected)


def test_lowering_a_threshold_in_the_sidebar_raises_more_flags(explored, monkeypatch):
    db, ids, _ = explored
    at = open_app(monkeypatch, db)
    before = at.dataframe[0].value.set_index("id").loc[ids["baseline"], "anomalies"]
    at.sidebar.number_input(key="threshold_grad_explode").set_value(1e-3).run()
    after = at.dataframe[0].value.set_index("id").loc[ids["baseline"], "anomalies"]
    assert after > before


def test_run_without_grad_norms_or_lr_shows_not_recorded(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["imported"], ids["baseline"]])
    drawn = charts(at)
    label = f"old-report · {ids['imported'][:8]}"
    for title in ("Gradient norm", "Learning rate"):
        assert drawn[title].subtitle == f"not recorded: {label}"
        assert label not in set(drawn[title].points["run"])  # nothing drawn, nothing filled
    assert drawn["Loss"].subtitle == ""
    assert (drawn["Loss"].points["run"] == label).sum() == len(store.epochs(ids["imported"]))


def test_nan_values_are_markers_on_the_top_edge_and_break_the_line(explored, monkeypatch):
    db, ids, store = explored
    run_id = ids["diverged"]
    epochs = store.epochs(run_id)
    nan_epochs = [e["epoch"] for e in epochs if not math.isfinite(e["loss"])]
    assert nan_epochs  # a learning rate of 1e8 does drive the loss to NaN
    at = compare(open_app(monkeypatch, db), [run_id])
    loss = charts(at)["Loss"]
    assert sorted(loss.nonfinite["x"]) == nan_epochs
    assert not set(loss.points["x"]) & set(nan_epochs)
    marker = next(m for m in loss.marks() if m.get("shape") == "triangle-down")
    assert marker["encoding"]["y"]["scale"]["domain"] == [0, 1]  # drawn on the edge
    grad = charts(at)["Gradient norm"]
    bad = [e["epoch"] for e in epochs if e["nonfinite_steps"]]
    assert sorted(grad.nonfinite["x"]) == bad
    steps_at = compare(at, [run_id], x_axis="step")
    step_marks = charts(steps_at)["Gradient norm"].nonfinite
    assert len(step_marks) == sum(not math.isfinite(s["grad_norm"])
                                  for s in store.steps(run_id))


def test_resumed_run_shows_its_resume_boundary(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["resumed"]])
    segments = store.segments(ids["resumed"])
    boundaries = charts(at)["Loss"].resumes
    assert boundaries["x"].tolist() == [s["start_epoch"] + 0.5 for s in segments[1:]]


def test_smoothing_draws_the_smoothed_line_over_the_faint_raw_line(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"]])
    at.slider(key="smoothing").set_value(0.6).run()
    loss = charts(at)["Loss"]
    lines = [m for m in loss.marks() if m["type"] == "line"]
    assert [m["encoding"]["y"]["field"] for m in lines] == ["value", "smoothed"]
    assert lines[0]["opacity"] < 1
    raw = [e["loss"] for e in store.epochs(ids["baseline"])]
    assert loss.points.sort_values("x")["value"].tolist() == pytest.approx(raw)
    smoothed = loss.points.sort_values("x")["smoothed"].tolist()
    assert smoothed[0] == pytest.approx(raw[0])  # debiased: starts at the first value
    assert smoothed[1:] != pytest.approx(raw[1:])


def test_config_diff_shows_only_the_keys_that_differ(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"], ids["faster"]])
    diff = at.dataframe[-1].value
    a, b = (store.get_run(ids[k])["config"] for k in ("baseline", "faster"))
    assert set(diff.index) == {k for k in a if a[k] != b[k]} == {"lr", "name"}


def test_run_detail_shows_attempts_checkpoints_datasets_and_config(explored, monkeypatch):
    db, ids, store = explored
    at = open_app(monkeypatch, db)
    at.switch_page("views/run.py").run()
    at.selectbox[0].set_value(ids["resumed"]).run()
    assert not at.exception
    tables = [d.value for d in at.dataframe]
    segments = next(t for t in tables if "start_epoch" in t.columns)
    assert segments["start_epoch"].tolist() == [s["start_epoch"]
                                                for s in store.segments(ids["resumed"])]
    checkpoints = next(t for t in tables if "path" in t.columns)
    assert checkpoints["epoch"].tolist() == [c["epoch"]
                                             for c in store.checkpoints(ids["resumed"])]
    datasets = next(t for t in tables if "pairs" in t.columns)
    assert dict(zip(datasets["dataset"], datasets["pairs"])) == store.get_run(
        ids["resumed"])["dataset_stats"]
    assert at.json[0].value and '"lr"' in at.json[0].value


def test_sql_page_returns_rows_and_refuses_writes_with_a_message(explored, monkeypatch):
    db, ids, store = explored
    at = open_app(monkeypatch, db)
    at.switch_page("views/sql.py").run()
    at.text_area[0].set_value("SELECT run_id, epoch, loss FROM epoch_metrics "
                              f"WHERE run_id = '{ids['baseline']}' ORDER BY epoch")
    at.button[0].click().run()
    result = at.dataframe[0].value
    assert result["loss"].tolist() == [e["loss"] for e in store.epochs(ids["baseline"])]
    assert at.get("download_button")
    at.text_area[0].set_value("DELETE FROM runs")
    at.button[0].click().run()
    assert not at.exception
    assert "read-only" in at.error[0].value
    assert len(store.list_runs()) == len(ids)


@pytest.mark.parametrize("make", ["missing", "empty file"])
def test_missing_or_empty_database_explains_how_to_start_a_first_run(tmp_path, monkeypatch,
                                                                     make):
    db = tmp_path / "nothing.db"
    if make == "empty file":
        db.touch()
    at = open_app(monkeypatch, db)
    assert not at.exception
    assert "hlbd train" in at.info[0].value


def test_a_file_that_is_not_a_database_gets_a_message_not_a_traceback(tmp_path, monkeypatch):
    db = tmp_path / "notes.db"
    db.write_text("these are notes, not a database\n" * 100)
    at = open_app(monkeypatch, db)
    assert not at.exception
    assert "cannot be read as a run database" in at.info[0].value


def test_sidebar_field_opens_another_database(explored, tmp_path, monkeypatch):
    db, ids, _ = explored
    at = open_app(monkeypatch, tmp_path / "elsewhere.db")
    assert "hlbd train" in at.info[0].value
    at.sidebar.text_input(key="db").set_value(str(db)).run()
    assert set(at.dataframe[0].value["id"]) == set(ids.values())
    assert database.resolve_db_url(str(db)) in at.sidebar.caption[-1].value


@sqlite_only
def test_explorer_reads_through_a_read_only_connection(explored, monkeypatch):
    db, _, _ = explored
    at = open_app(monkeypatch, db)
    at.switch_page("views/sql.py").run()
    at.text_area[0].set_value("PRAGMA query_only")
    at.button[0].click().run()
    assert at.dataframe[0].value.iloc[0, 0] == 1

