"""The explorer (app/main.py) driven through AppTest on databases written by real runs."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from helpers.backends import rows, sqlite_only
from helpers.colour import THEME_BACKGROUNDS, blend, contrast
from helpers.explorer import (
    APP,
    chart_spec,
    charts,
    column_formats,
    compare,
    open_app,
    runs_table_key,
    slide,
    slider_value,
)
from helpers.procs import kill_hard, spawn_hlbd, wait_until
from helpers.tiny import tiny_config, tiny_flags
from streamlit.testing.v1 import AppTest

from hlbd import importer
from hlbd.anomalies import detect
from hlbd.runner import resume_run, start_run
from hlbd.store import Store, connect


@pytest.fixture(scope="module")
def explored(databases, tmp_path_factory):
    """A database with real tiny runs: two ordinary ones, one whose gradients explode
    (its loss to about 1e9), one whose loss jumps to tens and stays there, one that
    diverges to NaN, one resumed, one killed with SIGKILL mid-run (crashed), and one
    imported from an older tool's report that kept losses only."""
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
        # lr 1 without clipping: a loss that jumps to tens and stays there.
        "wild": train(name="wild", epochs=4, lr=1.0, max_grad_norm=0.0),
        "diverged": train(name="diverged", epochs=2, lr=1e8, max_grad_norm=0.0,
                          weight_decay=0.0),
        "resumed": train(name="resumed", epochs=2, save_interval=1),
    }
    resume_run(store, ids["resumed"], epochs=3, progress=False)
    # An older tool's report: the baseline's losses only, its time as seconds since 1970.
    report = json.loads((root / "runs" / ids["baseline"] / "experiment_report.json")
                        .read_text())
    old = {"control_losses": report["control_losses"],
           "batch_losses": report["batch_losses"], "timestamp": 1_767_225_600.0,
           "dataset_stats": {"old.json": 143}}
    (root / "old" / "exp_2024").mkdir(parents=True)
    (root / "old" / "exp_2024" / "experiment_report.json").write_text(json.dumps(old))
    [imported] = importer.import_reports(store, root / "old", name="old-report")
    ids["imported"] = imported.run_id
    # A trainer killed with SIGKILL after its first epoch: its run says "running".
    trainer = spawn_hlbd("train", "--db", str(db), "--runs-dir", str(root / "runs"),
                         "--name", "crashed", *tiny_flags(dropout=0.2, epochs=200))
    try:
        ids["crashed"] = wait_until(lambda: rows(
            db, "SELECT r.run_id FROM runs r JOIN epochs e ON e.run_id = r.run_id "
                "WHERE r.name = 'crashed'"), trainer)[0][0]
    finally:
        kill_hard(trainer)
    yield db, ids, store
    store.close()
    databases.drop(db)


def label(store, run_id: str) -> str:
    return f"{store.get_run(run_id)['name']} · {run_id[:8]}"


def mine(frame: pd.DataFrame, store, run_id: str) -> pd.DataFrame:
    return frame[frame["run"] == label(store, run_id)].sort_values("x")


# -- runs table ---------------------------------------------------------------------


def test_runs_table_lists_every_run_with_status_epochs_losses_and_config(explored,
                                                                        monkeypatch):
    db, ids, store = explored
    at = open_app(monkeypatch, db)
    assert not at.exception
    table = at.dataframe[0].value.set_index("id")
    assert set(table.index) == set(ids.values())
    for run in store.list_runs():
        row = table.loc[run["run_id"]]
        assert row["name"] == run["name"]
        assert list(row["status"]) == [run["display_status"]]
        assert row["epochs"] == run["epochs"]
        assert row["datasets"] == ", ".join(run["dataset_stats"])
        losses = [e["loss"] for e in store.epochs(run["run_id"])]
        assert row["last loss"] == pytest.approx(losses[-1], nan_ok=True)
        finite = [v for v in losses if math.isfinite(v)] or [math.nan]
        assert row["best loss"] == pytest.approx(min(finite), nan_ok=True)
        assert row["lr"] == pytest.approx(run["config"].get("lr"), nan_ok=True) or (
            pd.isna(row["lr"]) and run["config"] == {})
    # A measured NaN is NaN; a value never recorded is missing (shown "not recorded").
    assert math.isnan(table.loc[ids["diverged"], "last loss"])
    assert pd.isna(table.loc[ids["imported"], "max grad norm"])
    assert list(table.loc[ids["crashed"], "status"]) == ["crashed"]
    assert table.loc[ids["crashed"], "progress"].startswith("epoch ")
    assert table.loc[ids["crashed"], "progress"].endswith(" of 200")


def test_numbers_in_grids_have_six_significant_digits_so_none_is_cut(explored, monkeypatch):
    db, _, _ = explored
    at = open_app(monkeypatch, db)
    formats = column_formats(at.dataframe[0])
    for column in ("last loss", "best loss", "max grad norm", "lr", "duration (min)"):
        assert formats[column] == "%.6g"
    # The exploded run's loss (about 1e9) and its id are both whole in the grid.
    at.switch_page("views/sql.py").run()
    at.text_area[0].set_value("SELECT run_id, epoch, loss, grad_norm FROM epoch_metrics")
    at.button[0].click().run()
    formats = column_formats(at.dataframe[0])
    assert formats["loss"] == formats["grad_norm"] == "%.6g"


def test_filters_narrow_the_runs_table_by_text_status_and_config(explored, monkeypatch):
    db, ids, _ = explored
    at = open_app(monkeypatch, db)
    at.text_input(key="text_filter").set_value("old.json").run()
    assert at.dataframe[0].value["id"].tolist() == [ids["imported"]]
    at.text_input(key="text_filter").set_value("lr>1").run()
    assert set(at.dataframe[0].value["id"]) == {ids["exploding"], ids["diverged"]}
    at.text_input(key="text_filter").set_value("lr=0.005 epochs>=3").run()
    assert at.dataframe[0].value["id"].tolist() == [ids["faster"]]
    at.text_input(key="text_filter").set_value("").run()
    at.multiselect(key="status_filter").set_value([]).run()
    assert at.dataframe[0].value.empty


def test_a_filter_reads_spaced_comparisons_and_the_columns_its_help_names(explored,
                                                                          monkeypatch):
    db, _, store = explored
    at = open_app(monkeypatch, db)
    help_text = at.text_input(key="text_filter").help
    assert "last loss" not in help_text and "last_loss" in help_text
    slow = {r["run_id"] for r in store.list_runs() if (r["config"].get("lr") or 1) < 0.003}
    assert slow
    for text in ("lr<0.003", "lr < 0.003", "lr <0.003", "lr< 0.003"):
        at.text_input(key="text_filter").set_value(text).run()
        assert set(at.dataframe[0].value["id"]) == slow, text
        assert not at.warning
    below = {r["run_id"] for r in store.list_runs()
             if r["last_loss"] is not None and r["last_loss"] < 100}
    at.text_input(key="text_filter").set_value("last_loss < 100").run()
    assert set(at.dataframe[0].value["id"]) == below  # NaN and the exploded run are out


@pytest.mark.parametrize("text, named", [("lr<abc", "needs a number"),
                                         ("bogus=3", "no column or config key is named"),
                                         ("<3", "no column or config key before")])
def test_a_filter_term_that_cannot_be_read_is_named_and_keeps_the_rows(
        explored, monkeypatch, text, named):
    db, ids, _ = explored
    at = open_app(monkeypatch, db)
    at.text_input(key="text_filter").set_value(text).run()
    assert named in at.warning[0].value and f"`{text}`" in at.warning[0].value
    assert set(at.dataframe[0].value["id"]) == set(ids.values())
    # The term is left out; the rest of the filter still applies.
    at.text_input(key="text_filter").set_value(f"{text} old.json").run()
    assert at.dataframe[0].value["id"].tolist() == [ids["imported"]]


def test_a_header_click_sorts_the_runs_nan_and_not_recorded_last_either_way(explored,
                                                                           monkeypatch):
    db, ids, _ = explored
    at = open_app(monkeypatch, db)

    def click(column: str) -> pd.DataFrame:
        """What the grid sends when its header is clicked: that column selected."""
        key = runs_table_key(at)
        rows = at.session_state[key]["selection"]["rows"]
        at.session_state[key] = {"selection": {"rows": rows, "columns": [column],
                                               "cells": []}}
        return at.run().dataframe[0].value

    for column, nan_run, missing_run in (("best loss", "diverged", None),
                                         ("max grad norm", None, "imported")):
        for descending in (False, True):
            table = click(column)
            values = table[column].tolist()
            measured = [v for v in values if not pd.isna(v)]
            assert measured == sorted(measured, reverse=descending)
            assert values[:len(measured)] == measured  # NaN and missing after them all
            if nan_run:
                assert table["id"].iloc[-1] == ids[nan_run]
            if missing_run:
                assert table["id"].iloc[-1] == ids[missing_run]
            assert at.session_state[runs_table_key(at)]["selection"]["columns"] == []
        assert "sorted by" in at.caption[0].value
        # Each click acted on renews the grid's key; the old grids' states are dropped.
        assert [k for k in at.session_state.to_dict()
                if k.startswith("runs_table") and k[len("runs_table"):].lstrip("_").isdigit()
                or k == "runs_table"] == [runs_table_key(at)]
        # A third click: newest first again.
        assert click(column)["id"].tolist() == open_app(monkeypatch, db).dataframe[
            0].value["id"].tolist()


def test_runs_picked_in_the_sidebar_or_by_link_show_ticked_and_a_tick_adds_to_them(
        explored, monkeypatch):
    db, ids, _ = explored
    at = open_app(monkeypatch, db)
    picked = [ids["baseline"], ids["faster"]]
    at.sidebar.multiselect(key="picked").set_value(picked).run()
    shown = at.dataframe[0].value["id"].tolist()
    assert sorted(at.session_state["runs_table"]["selection"]["rows"]) == sorted(
        shown.index(i) for i in picked)
    # The user ticks one more row: the picks grow by that run, nothing else changes.
    rows = [shown.index(i) for i in picked] + [shown.index(ids["resumed"])]
    at.session_state["runs_table"] = {"selection": {"rows": rows, "columns": [],
                                                    "cells": []}}
    at.run()
    assert at.session_state["picked"] == [*picked, ids["resumed"]]
    # A link names runs by id prefix: they show ticked too.
    linked = AppTest.from_file(str(APP), default_timeout=60)
    linked.query_params["runs"] = f"{ids['exploding'][:8]},{ids['diverged'][:10]}"
    linked.run()
    shown = linked.dataframe[0].value["id"].tolist()
    assert linked.session_state["picked"] == [ids["exploding"], ids["diverged"]]
    assert sorted(linked.session_state["runs_table"]["selection"]["rows"]) == sorted(
        [shown.index(ids["exploding"]), shown.index(ids["diverged"])])


@sqlite_only  # copies the file with sqlite3's backup
def test_ticks_follow_run_ids_when_a_new_run_arrives_on_top(explored, monkeypatch,
                                                            tmp_path):
    db, _, _ = explored
    copy = tmp_path / "growing.db"
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    at = open_app(monkeypatch, copy)
    shown = at.dataframe[0].value["id"].tolist()
    at.session_state["runs_table"] = {"selection": {"rows": [1, 2], "columns": [],
                                                    "cells": []}}
    at.run()
    assert at.session_state["picked"] == [shown[1], shown[2]]
    # A trainer starts a run: it is created before its first epoch, on top of the table.
    growing = Store.open(str(copy))
    newest = growing.create_run("newest", tiny_config().to_dict(), {"bundled": 143})
    # As the run list's 2 s wait runs out and the store is asked again what changed
    # (app/run_list.py), its rows are read anew.
    st.cache_data.clear()
    st.cache_resource.clear()
    at.run()  # what the page's refresh does
    now = at.dataframe[0].value["id"].tolist()
    assert now[0] == newest and now[1:] == shown
    rows = at.session_state["runs_table"]["selection"]["rows"]
    assert sorted(now[i] for i in rows) == sorted([shown[1], shown[2]])
    at.session_state["runs_table"] = {"selection": {"rows": [*rows, 0], "columns": [],
                                                    "cells": []}}
    at.run()
    assert at.session_state["picked"] == [shown[1], shown[2], newest]
    growing.close()


# -- compare ------------------------------------------------------------------------


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
        for run_id in picked:
            epochs = store.epochs(run_id)
            points = mine(drawn[title].points, store, run_id)
            assert points["x"].tolist() == [e["epoch"] for e in epochs]
            assert points["value"].tolist() == [e[column] for e in epochs]  # exactly
    band = mine(drawn["Gradient norm"].points, store, ids["baseline"])
    epochs = store.epochs(ids["baseline"])
    assert band["hi"].tolist() == [e["grad_norm_max"] for e in epochs]
    assert band["lo"].tolist() == [e["grad_norm_min"] for e in epochs]
    # Hovering shows every run's value at an x, numbers with six significant digits.
    hover = drawn["Loss"].hover
    assert hover["x"].tolist() == [1, 2, 3]
    assert hover["v0"].tolist() == [e["loss"] for e in store.epochs(ids["baseline"])]
    tooltip = next(m for m in drawn["Loss"].marks() if m["type"] == "rect")["encoding"][
        "tooltip"]
    assert [t.get("title") for t in tooltip[1:] if t["field"].startswith("v")] == [
        label(store, i) for i in picked]   # (w0, w1, ...: their held-out values)
    assert all(t["format"] == ".6~g" for t in tooltip[1:])


def test_every_recorded_metric_can_be_charted(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"]])
    at.button_group(key="metrics").set_value(["token_accuracy", "tokens_per_second"]).run()
    drawn = charts(at)
    assert list(drawn) == ["Token accuracy", "Tokens per second"]
    epochs = store.epochs(ids["baseline"])
    assert drawn["Token accuracy"].points["value"].tolist() == [e["token_accuracy"]
                                                                for e in epochs]
    assert drawn["Tokens per second"].points["value"].tolist() == [
        e["tokens_per_second"] for e in epochs]


def test_step_axis_draws_every_recorded_step_of_short_runs(explored, monkeypatch):
    db, ids, store = explored
    picked = [ids["baseline"], ids["faster"]]
    at = compare(open_app(monkeypatch, db), picked, x_axis="step")
    loss = charts(at)["Loss"].points
    for run_id in picked:
        steps = store.steps(run_id)
        points = mine(loss, store, run_id)
        assert points["x"].tolist() == [s["step"] for s in steps]
        assert points["value"].tolist() == [s["loss"] for s in steps]


def test_wall_time_axis_uses_when_each_epoch_was_recorded(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"], ids["imported"]],
                 x_axis="wall")
    drawn = charts(at)["Loss"]
    run = store.get_run(ids["baseline"])
    elapsed = [(e["recorded_at"] - run["created_at"]).total_seconds()
               for e in store.epochs(ids["baseline"])]
    assert "wall time" in drawn.marks()[0]["encoding"]["x"]["title"]
    assert mine(drawn.points, store, ids["baseline"])["x"].tolist() == pytest.approx(elapsed)
    # An imported run's epochs have no recording time: not drawn at 0, said so.
    assert mine(drawn.points, store, ids["imported"]).empty
    assert f"not recorded: {label(store, ids['imported'])} (no recording times)" in \
        drawn.subtitle


def test_imported_epochs_have_no_invented_times(explored, monkeypatch):
    db, ids, store = explored
    assert all(e["recorded_at"] is None for e in store.epochs(ids["imported"]))
    at = open_app(monkeypatch, db)
    table = at.dataframe[0].value
    row = table.set_index("id").loc[ids["imported"]]
    assert pd.isna(row["started (UTC)"]) and pd.isna(row["duration (min)"])
    # Sorted by when its report says it was written (2026-01-01), not as the newest.
    assert table["id"].tolist()[-1] == ids["imported"]
    at.switch_page("views/run.py").run()
    at.selectbox(key="detail_run").set_value(ids["imported"]).run()
    assert any("written at 2026-01-01 00:00:00 UTC" in c.value for c in at.caption)


def test_an_imported_run_does_not_show_the_importers_process_and_host(explored,
                                                                       monkeypatch):
    db, ids, store = explored
    [segment] = store.segments(ids["imported"])
    assert segment["pid"] is None and segment["hosts"] is None  # it ran elsewhere
    at = open_app(monkeypatch, db)
    at.switch_page("views/run.py").run()
    at.selectbox(key="detail_run").set_value(ids["imported"]).run()
    segments = next(d.value for d in at.dataframe if "start epoch" in d.value.columns)
    row = segments.iloc[0]
    assert pd.isna(row["pid"]) and pd.isna(row["host"])
    assert pd.isna(row["started (UTC)"]) and pd.isna(row["ended (UTC)"])
    # A run trained here keeps its own.
    at.selectbox(key="detail_run").set_value(ids["baseline"]).run()
    segments = next(d.value for d in at.dataframe if "start epoch" in d.value.columns)
    assert segments["pid"].iloc[0] == store.segments(ids["baseline"])[0]["pid"]


def test_all_charts_of_the_page_share_one_x_range(explored, monkeypatch):
    db, ids, _store = explored
    # The resumed run's boundary, the diverged run's NaN markers and the imported run's
    # missing grad norm all change what each chart would pick on its own.
    picked = [ids["resumed"], ids["diverged"], ids["imported"]]
    for x_axis in ("epoch", "step"):
        at = compare(open_app(monkeypatch, db), picked, x_axis=x_axis)
        spec, _ = chart_spec(at)
        # One x scale for the page: Vega-Lite takes the union of every chart's data.
        assert spec["resolve"]["scale"]["x"] == "shared"
        scales = [m["encoding"]["x"]["scale"] for c in charts(at).values()
                  for m in c.marks() if "x" in m["encoding"]]
        assert all(s == {"zero": False, "nice": False} for s in scales)
        # ... and the zoom is the same on every chart: the data of each is cut to it.
        at.session_state["charts"] = {"zoom": {"x": [1.5, 2.5]}}
        at.run()
        for chart in charts(at).values():
            assert chart.points["x"].between(1.5, 2.5).all()
            assert chart.resumes["x"].between(1.5, 2.5).all()


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
    assert set(flags["run"]) == {label(store, run_id)}
    listed = at.dataframe[0].value
    assert sorted(listed["rule"]) == sorted(f["rule"] for f in expected)


def test_compare_flags_keep_the_step_the_rule_named(explored, monkeypatch):
    db, ids, store = explored
    run_id = ids["exploding"]
    stored = {(a["epoch"], a["rule"]): a["step"] for a in store.anomalies(run_id)}
    assert any(stored.values())  # the trainer logged "at step N"
    at = compare(open_app(monkeypatch, db), [run_id], x_axis="step")
    listed = at.dataframe[0].value
    for _, flag in listed.iterrows():
        if stored.get((flag["epoch"], flag["rule"])):
            assert flag["step"] == stored[(flag["epoch"], flag["rule"])]
    diamonds = charts(at)["Gradient norm"].flags
    explosions = listed[listed["rule"] == "grad_explosion"]
    assert sorted(diamonds[diamonds["rule"] == "grad_explosion"]["x"]) == sorted(
        explosions["step"])


def test_a_nan_loss_flag_points_at_its_step_on_the_run_and_compare_pages(explored,
                                                                         monkeypatch):
    db, ids, store = explored
    run_id = ids["diverged"]
    first_bad = {}
    for s in store.steps(run_id):
        if not math.isfinite(s["loss"]):
            first_bad.setdefault(s["epoch"], s["step"])
    assert first_bad
    at = open_app(monkeypatch, db)
    at.switch_page("views/run.py").run()
    at.selectbox(key="detail_run").set_value(run_id).run()
    flags = next(d.value for d in at.dataframe if "rule" in d.value.columns)
    nan_loss = flags[flags["rule"] == "nonfinite_loss"]
    assert dict(zip(nan_loss["epoch"], nan_loss["step"])) == first_bad
    at = compare(at, [run_id], x_axis="step")
    diamonds = charts(at)["Loss"].flags
    assert sorted(diamonds[diamonds["rule"] == "nonfinite_loss"]["x"]) == sorted(
        first_bad.values())


def test_lowering_a_threshold_in_the_sidebar_raises_more_flags(explored, monkeypatch):
    db, ids, _ = explored
    at = open_app(monkeypatch, db)
    before = at.dataframe[0].value.set_index("id").loc[ids["baseline"], "anomalies"]
    at.sidebar.number_input(key="threshold_grad_explode").set_value(1e-3).run()
    after = at.dataframe[0].value.set_index("id").loc[ids["baseline"], "anomalies"]
    assert after > before
    assert at.query_params["grad_explode"] == "0.001"  # the link carries it


def test_run_without_grad_norms_or_lr_shows_not_recorded(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["imported"], ids["baseline"]])
    drawn = charts(at)
    name = label(store, ids["imported"])
    for title in ("Gradient norm", "Learning rate"):
        assert drawn[title].subtitle == f"not recorded: {name}"
        assert name not in set(drawn[title].points["run"])  # nothing drawn, nothing filled
    assert drawn["Loss"].subtitle == ""
    assert (drawn["Loss"].points["run"] == name).sum() == len(store.epochs(ids["imported"]))


def test_nan_values_are_markers_on_the_top_edge_and_break_the_line(explored, monkeypatch):
    db, ids, store = explored
    run_id = ids["diverged"]
    epochs = store.epochs(run_id)
    nan_epochs = [e["epoch"] for e in epochs if not math.isfinite(e["loss"])]
    assert nan_epochs  # a learning rate of 1e8 does drive the loss to NaN
    at = compare(open_app(monkeypatch, db), [run_id])
    loss = charts(at)["Loss"]
    training = loss.nonfinite[~loss.nonfinite["what"].str.startswith("validation")]
    assert sorted(training["x"]) == nan_epochs   # (its NaN val_loss is marked too)
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


def test_one_exploded_run_does_not_flatten_the_others(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"], ids["exploding"]])
    loss = charts(at)["Loss"]
    calm = max(e["loss"] for e in store.epochs(ids["baseline"]))
    wild = max(e["loss"] for e in store.epochs(ids["exploding"]))
    assert wild > 100 * calm
    _, high = loss.y_scale()["domain"]
    assert calm <= high < 2 * calm
    clipped = loss.clipped
    assert set(clipped["run"]) == {label(store, ids["exploding"])} and len(clipped)
    # Off: every value in range again; the log scale is offered for the loss too.
    at.toggle(key="robust").set_value(False).run()
    assert "domain" not in charts(at)["Loss"].y_scale()
    at.button_group(key="log_scale").set_value(["loss"]).run()
    assert charts(at)["Loss"].y_scale()["type"] == "log"


def test_a_loss_that_jumps_to_tens_is_marked_on_the_edge_not_flattening_the_others(
        explored, monkeypatch):
    db, ids, store = explored
    calm_ids = [ids["baseline"], ids["faster"]]
    at = compare(open_app(monkeypatch, db), [*calm_ids, ids["wild"]])
    loss = charts(at)["Loss"]
    calm = [e["loss"] for i in calm_ids for e in store.epochs(i)]
    wild = store.epochs(ids["wild"])
    assert min(e["loss"] for e in wild) > 5 * max(calm)  # tens against a few
    low, high = loss.y_scale()["domain"]
    assert low <= min(calm) and max(calm) <= high < 1.2 * max(calm)  # the calm runs fill it
    # Every wild point beyond the range is marked on the top edge, with its value.
    marked = loss.clipped[(loss.clipped["run"] == label(store, ids["wild"]))
                          & ~loss.clipped["what"].str.startswith("validation: ")]
    assert sorted(marked["x"]) == [e["epoch"] for e in wild if e["loss"] > high]
    assert set(marked["edge"]) == {0.97}
    assert "Robust y range" in loss.subtitle and "wild" in loss.subtitle
    # The LR that explains it is drawn as recorded, never cut.
    lr = charts(at)["Learning rate"]
    assert "domain" not in lr.y_scale() and lr.clipped.empty
    assert mine(lr.points, store, ids["wild"])["value"].tolist() == [e["lr"] for e in wild]
    # The choice is the user's: off, every value is in range.
    at.toggle(key="robust").set_value(False).run()
    assert "domain" not in charts(at)["Loss"].y_scale()


def test_a_run_keeps_its_colour_whichever_runs_are_picked(explored, monkeypatch):
    db, ids, store = explored

    def colour_of(picked, run_id):
        at = compare(open_app(monkeypatch, db), picked)
        scale = next(iter(charts(at).values())).marks()[0]["encoding"]["color"]["scale"]
        return dict(zip(scale["domain"], scale["range"]))[label(store, run_id)]

    alone = colour_of([ids["faster"]], ids["faster"])
    assert colour_of([ids["diverged"], ids["faster"], ids["baseline"]], ids["faster"]) == alone
    everything = compare(open_app(monkeypatch, db), list(ids.values()))
    scale = next(iter(charts(everything).values())).marks()[0]["encoding"]["color"]["scale"]
    assert len(set(scale["range"])) == len(ids)


def test_every_line_of_a_run_stands_3_to_1_on_light_and_dark_pages(explored, monkeypatch):
    db, ids, _ = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"], ids["faster"]])
    slide(at, "smoothing", 0.6)  # a raw line under the smoothed one
    for chart in charts(at).values():
        for mark in chart.marks():
            if mark["type"] not in ("line", "rule"):
                continue
            encoded = mark["encoding"].get("opacity", {})
            # Drawn at its value; the hover rule at its condition's, when it shows.
            shown = (encoded["condition"] if encoded.get("condition", {}).get("param")
                     == "hover" else encoded)
            opacity = mark.get("opacity", 1) * shown.get("value", 1)
            colors = (mark["encoding"]["color"]["scale"]["range"]
                      if "color" in mark["encoding"] else [mark["color"]])
            for color in colors:
                for background in THEME_BACKGROUNDS.values():
                    drawn = blend(color, background, opacity)
                    assert contrast(drawn, background) >= 3, (chart.title, color, opacity)


def test_resumed_run_shows_its_resume_boundary(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["resumed"]])
    segments = store.segments(ids["resumed"])
    boundaries = charts(at)["Loss"].resumes
    assert boundaries["x"].tolist() == [s["start_epoch"] + 0.5 for s in segments[1:]]


def test_smoothing_draws_over_the_faint_raw_line_and_never_touches_the_lr(explored,
                                                                          monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"]])
    slide(at, "smoothing", 0.6)
    drawn = charts(at)
    loss = drawn["Loss"]
    lines = [m for m in loss.marks() if m["type"] == "line" and m["data"] == "points_loss"]
    assert [m["encoding"]["y"]["field"] for m in lines] == ["value", "smooth"]
    assert lines[0]["strokeWidth"] < lines[1]["strokeWidth"]  # the raw line: thinner
    raw = [e["loss"] for e in store.epochs(ids["baseline"])]
    assert loss.points["value"].tolist() == raw
    smoothed = loss.points["smooth"].tolist()
    assert smoothed[0] == pytest.approx(raw[0])  # debiased: starts at the first value
    assert smoothed[1:] != pytest.approx(raw[1:])
    lr = drawn["Learning rate"]
    assert [m["encoding"]["y"]["field"] for m in lr.marks() if m["type"] == "line"] == [
        "value"]
    assert "smooth" not in lr.points
    assert lr.points["value"].tolist() == [e["lr"] for e in store.epochs(ids["baseline"])]


def test_config_diff_shows_only_the_keys_that_differ(explored, monkeypatch):
    db, ids, store = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"], ids["faster"]])
    diff = at.dataframe[-1].value
    a, b = (store.get_run(ids[k])["config"] for k in ("baseline", "faster"))
    assert set(diff.index) == {k for k in a if a[k] != b[k]} == {"lr", "name"}


def test_a_link_reproduces_the_compare_view_and_follows_changes(explored, monkeypatch):
    db, ids, _ = explored
    monkeypatch.setenv("HLBD_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update({"runs": f"{ids['faster'][:8]},{ids['baseline'][:8]}",
                            "x": "step", "smooth": "0.5", "grad_explode": "5",
                            "charts": "loss,lr", "log": "loss"})
    at.run()
    at.switch_page("views/compare.py").run()
    assert not at.exception
    assert at.session_state["picked"] == [ids["faster"], ids["baseline"]]
    assert at.button_group(key="x_axis").value == "step"
    assert slider_value(at, "smoothing") == 0.5
    assert at.number_input(key="threshold_grad_explode").value == 5.0
    drawn = charts(at)
    assert list(drawn) == ["Loss", "Learning rate"]
    assert drawn["Loss"].y_scale()["type"] == "log"
    # Changing the view rewrites the link.
    at.button_group(key="x_axis").set_value("wall").run()
    slide(at, "smoothing", 0.0)
    params = dict(at.query_params)
    assert params["x"] == "wall" and "smooth" not in params
    assert params["runs"] == f"{ids['faster'][:8]},{ids['baseline'][:8]}"
    assert params["grad_explode"] == "5"


def test_each_chart_is_log_or_linear_on_its_own(explored, monkeypatch):
    db, ids, _ = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"]])
    at.button_group(key="log_scale").set_value(["loss"]).run()
    drawn = charts(at)
    assert drawn["Loss"].y_scale()["type"] == "log"
    assert drawn["Gradient norm"].y_scale().get("type", "linear") == "linear"
    assert drawn["Learning rate"].y_scale().get("type", "linear") == "linear"
    assert dict(at.query_params)["log"] == "loss"
    at.button_group(key="log_scale").set_value(["grad_norm"]).run()
    drawn = charts(at)
    assert drawn["Loss"].y_scale().get("type", "linear") == "linear"
    assert drawn["Gradient norm"].y_scale()["type"] == "log"


def test_a_control_change_builds_only_the_charts_whose_data_it_changes(explored,
                                                                     monkeypatch):
    db, ids, _ = explored
    monkeypatch.syspath_prepend(str(APP.parent))
    import series as app_series  # the app's own module, as Streamlit imports it

    built = []
    real = app_series.metric_data

    def counted(series, metric, *args, **kwargs):
        built.append(metric)
        return real(series, metric, *args, **kwargs)

    monkeypatch.setattr(app_series, "metric_data", counted)
    st.cache_data.clear()
    at = compare(open_app(monkeypatch, db), [ids["baseline"], ids["faster"]])
    assert built == ["loss", "grad_norm", "lr"]
    first = charts(at)
    for change, rebuilt in (
            (lambda: slide(at, "smoothing", 0.6), ["loss", "grad_norm"]),  # never the LR
            (lambda: at.button_group(key="log_scale").set_value(  # grad norm's by default
                [*at.button_group(key="log_scale").value, "lr"]).run(), ["lr"]),
            (lambda: at.button_group(key="metrics").set_value(
                ["loss", "grad_norm", "lr", "tokens_per_second"]).run(),
             ["tokens_per_second"]),
            (lambda: slide(at, "smoothing", 0.0), [])):  # each chart's data as before
        built.clear()
        change()
        assert not at.exception
        assert built == rebuilt
    # What came from the cache is what a build from nothing draws.
    again = charts(at)
    st.cache_data.clear()
    at.run()
    assert built[-4:] == ["loss", "grad_norm", "lr", "tokens_per_second"]
    for title, drawn in charts(at).items():
        pd.testing.assert_frame_equal(drawn.points, again[title].points)
    pd.testing.assert_frame_equal(again["Loss"].points, first["Loss"].points)


def test_the_reset_zoom_button_brings_back_the_whole_x_range(explored, monkeypatch):
    db, ids, _ = explored
    monkeypatch.setenv("HLBD_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update({"runs": ids["baseline"][:8], "x": "step", "range": "2,5"})
    at.run()
    at.switch_page("views/compare.py").run()
    zoomed = charts(at)["Loss"].points
    assert zoomed["x"].between(2, 5).all()
    assert not at.button(key="reset_zoom").disabled
    at.button(key="reset_zoom").click().run()
    assert "range" not in dict(at.query_params)
    assert charts(at)["Loss"].points["x"].max() > 5
    assert at.button(key="reset_zoom").disabled  # nothing left to reset


def test_a_chart_takes_a_y_range_set_by_hand_and_the_link_keeps_it(explored, monkeypatch):
    db, ids, _ = explored
    at = compare(open_app(monkeypatch, db), [ids["baseline"]])
    values = charts(at)["Loss"].points["value"]
    low, high = float(values.min()), float(values.median())
    at.number_input(key="y_low_loss").set_value(low)
    at.number_input(key="y_high_loss").set_value(high).run()
    drawn = charts(at)
    assert drawn["Loss"].y_scale()["domain"] == [low, high]
    # The values above it are marked on the top edge, with their values; the other
    # charts keep their own range.
    clipped = drawn["Loss"].clipped
    assert len(clipped) == (values > high).sum() > 0 and (clipped["edge"] > 0.5).all()
    assert "domain" not in drawn["Learning rate"].y_scale()
    assert "Y range set to" in drawn["Loss"].subtitle
    assert dict(at.query_params)["y"] == f"loss:{low!r}:{high!r}"
    # One end left empty: where the values reach.
    at.number_input(key="y_low_loss").set_value(None).run()
    assert charts(at)["Loss"].y_scale()["domain"] == [low, high]
    assert dict(at.query_params)["y"] == f"loss::{high!r}"
    # A start above the end is refused and said, not drawn.
    at.number_input(key="y_low_loss").set_value(high + 1).run()
    assert "domain" not in charts(at)["Loss"].y_scale()
    assert any("start must be below its end" in w.value for w in at.warning)
    # The link opens the view with the range set.
    monkeypatch.setenv("HLBD_DB", str(db))
    other = AppTest.from_file(str(APP), default_timeout=60)
    other.query_params.update({"runs": ids["baseline"][:8], "y": f"loss::{high!r}"})
    other.run()
    other.switch_page("views/compare.py").run()
    assert charts(other)["Loss"].y_scale()["domain"] == [low, high]
    assert other.number_input(key="y_high_loss").value == high


@sqlite_only
def test_any_name_a_run_logged_can_be_the_x_axis(backend, databases, tmp_path, monkeypatch):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "own_loop.py"
    spec = importlib.util.spec_from_file_location("own_loop", path)
    own_loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(own_loop)
    db = databases.new(tmp_path)
    run_id = own_loop.train(db, epochs=2, runs_dir=str(tmp_path / "runs"))
    store = Store.open_read_only(db)
    ppl = {p["step"]: p["value"] for p in store.points(run_id, "ppl")}
    lr1 = {p["step"]: p["value"] for p in store.points(run_id, "lr/1")}
    closes = {}  # epoch -> its last step
    for p in store.points(run_id, "ppl"):
        closes[p["epoch"]] = max(closes.get(p["epoch"], 0), p["step"])
    store.close()

    at = compare(open_app(monkeypatch, db), [run_id])
    assert "ppl" in at.selectbox(key="x_logged").options  # as the run named it
    at.button_group(key="metrics").set_value(["loss", "p:lr/1"]).run()
    at.selectbox(key="x_logged").set_value("p:ppl").run()
    assert not at.exception
    assert dict(at.query_params)["x"] == "p:ppl"
    assert at.button_group(key="x_axis").value is None  # one x axis at a time
    drawn = charts(at)
    assert drawn["Loss"].x_scale() is not None
    # A step's value at the ppl logged at the same step ...
    points = drawn["lr/1"].points
    assert sorted(zip(points["x"], points["value"])) == sorted(
        (ppl[step], value) for step, value in lr1.items())
    # ... an epoch's at the ppl at its close.
    assert sorted(drawn["Loss"].points["x"]) == sorted(ppl[s] for s in closes.values())
    spec, _ = chart_spec(at)
    assert "ppl" in json.dumps(spec)  # the axis says what it is
    at.button_group(key="x_axis").set_value("step").run()
    assert dict(at.query_params)["x"] == "step"
    assert at.selectbox(key="x_logged").value is None


def test_a_link_names_runs_hidden_in_the_legend_and_keeps_naming_them(explored,
                                                                      monkeypatch):
    db, ids, store = explored
    monkeypatch.setenv("HLBD_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update({"runs": f"{ids['faster'][:8]},{ids['baseline'][:8]}",
                            "hide": f"{ids['faster'][:8]},nope"})
    at.run()
    at.switch_page("views/compare.py").run()
    element = next(e for e in at.get("bidi_component")
                   if e.proto.component_name == "hlbd_chart" and e.proto.HasField("mixed"))
    assert json.loads(element.proto.mixed.json)["hidden"] == [label(store, ids["faster"])]
    assert at.query_params["hide"] == ids["faster"][:8]
    # The legend said otherwise (the component's state): the link follows.
    at.session_state["charts"] = {"hidden": [label(store, ids["baseline"])]}
    at.run()
    assert at.query_params["hide"] == ids["baseline"][:8]


# -- run detail, SQL, databases ---------------------------------------------------------


def test_run_detail_shows_segments_checkpoints_datasets_and_config(explored, monkeypatch):
    db, ids, store = explored
    at = open_app(monkeypatch, db)
    at.switch_page("views/run.py").run()
    at.selectbox(key="detail_run").set_value(ids["resumed"]).run()
    assert not at.exception
    tables = [d.value for d in at.dataframe]
    segments = next(t for t in tables if "start epoch" in t.columns)
    assert segments["start epoch"].tolist() == [s["start_epoch"]
                                                for s in store.segments(ids["resumed"])]
    checkpoints = next(t for t in tables if "path" in t.columns)
    assert checkpoints["epoch"].tolist() == [c["epoch"]
                                             for c in store.checkpoints(ids["resumed"])]
    datasets = next(t for t in tables if "pairs" in t.columns)
    assert dict(zip(datasets["dataset"], datasets["pairs"])) == store.get_run(
        ids["resumed"])["dataset_stats"]
    assert at.json[0].value and '"lr"' in at.json[0].value
    assert at.query_params["run"] == ids["resumed"][:8]


def test_a_crashed_run_says_crashed_in_its_segments_too(explored, monkeypatch):
    db, ids, store = explored
    assert store.get_run(ids["crashed"])["display_status"] == "crashed"
    at = open_app(monkeypatch, db)
    at.switch_page("views/run.py").run()
    at.selectbox(key="detail_run").set_value(ids["crashed"]).run()
    segments = next(d.value for d in at.dataframe if "start epoch" in d.value.columns)
    assert segments["status"].tolist() == ["crashed"]
    assert pd.isna(segments["ended (UTC)"].iloc[0])  # its end was never recorded


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


def test_sql_page_shows_results_with_repeated_column_names(explored, monkeypatch):
    db, _, _ = explored
    at = open_app(monkeypatch, db)
    at.switch_page("views/sql.py").run()
    at.text_area[0].set_value("SELECT * FROM epochs e JOIN segments s ON "
                              "s.run_id = e.run_id AND s.segment = e.segment")
    at.button[0].click().run()
    assert not at.exception
    result = at.dataframe[0].value
    assert {"run_id", "run_id_2", "segment", "segment_2"} <= set(result.columns)
    assert (result["run_id"] == result["run_id_2"]).all()
    assert any("run_id_2 (run_id)" in c.value for c in at.caption)


def test_sql_page_shows_a_null_as_null_and_the_runs_pages_as_not_recorded(explored,
                                                                          monkeypatch):
    db, ids, _ = explored
    at = open_app(monkeypatch, db)
    assert at.dataframe[0].proto.placeholder == "not recorded"  # the runs table's records
    at.switch_page("views/sql.py").run()
    at.text_area[0].set_value("SELECT epoch, superseded_by FROM epochs "
                              f"WHERE run_id = '{ids['resumed']}' ORDER BY epoch, segment")
    at.button[0].click().run()
    result = at.dataframe[0]
    assert result.value["superseded_by"].isna().any()  # effective epochs: NULL
    assert result.proto.placeholder == "NULL"


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
    assert connect.resolve_db_url(str(db)) in at.sidebar.caption[-1].value


@sqlite_only
def test_explorer_reads_through_a_read_only_connection(explored, monkeypatch):
    db, _, _ = explored
    at = open_app(monkeypatch, db)
    at.switch_page("views/sql.py").run()
    at.text_area[0].set_value("PRAGMA query_only")
    at.button[0].click().run()
    assert at.dataframe[0].value.iloc[0, 0] == 1


def test_a_link_with_garbage_is_ignored_not_a_traceback(explored, monkeypatch):
    db, ids, _ = explored
    monkeypatch.setenv("HLBD_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update({"runs": f"nope,{ids['baseline'][:8]},", "x": "sideways",
                            "smooth": "lots", "range": "5,1", "charts": "bogus,loss",
                            "log": "'; DROP", "robust": "maybe", "grad_explode": "nan",
                            "spike_window": "-3", "rising_epochs": "2.5", "run": "%%"})
    at.run()
    for page in ("views/compare.py", "views/run.py", "views/sql.py", "views/runs.py"):
        at.switch_page(page).run()
        assert not at.exception, page
    assert at.session_state["picked"] == [ids["baseline"]]
    at.switch_page("views/compare.py").run()
    assert at.button_group(key="x_axis").value == "epoch"
    assert list(charts(at)) == ["Loss"]
    assert at.number_input(key="threshold_spike_window").value == 5


def test_a_threshold_out_of_its_range_is_ignored_from_a_link_and_cannot_be_typed(
        explored, monkeypatch):
    """A negative grad_explode flagged every epoch (and a count of 0 evaluations is no
    count): such a value in the link leaves the threshold at its default, and the
    sidebar's field does not go below the threshold's least sensible value."""
    db, _, _ = explored
    monkeypatch.setenv("HLBD_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update({"grad_explode": "-5", "spike_z": "-0.5", "overfit_evals": "0",
                            "grad_vanish": "0.02"})
    at.run()
    assert not at.exception
    assert at.number_input(key="threshold_grad_explode").value == 10.0
    assert at.number_input(key="threshold_spike_z").value == 6.0
    assert at.number_input(key="threshold_overfit_evals").value == 3
    assert at.number_input(key="threshold_grad_vanish").value == 0.02   # in range: kept
    assert dict(at.query_params) == {"grad_vanish": "0.02"}
    for name in ("grad_explode", "grad_vanish", "spike_z", "spike_min_rise",
                 "loss_min_rise", "lr_rtol", "restart_grace"):
        assert at.number_input(key=f"threshold_{name}").min == 0, name
    for name in ("spike_window", "rising_epochs", "overfit_evals"):
        assert at.number_input(key=f"threshold_{name}").min == 1, name


@sqlite_only  # SQLite's blob literal
def test_sql_page_shows_blobs_and_mixed_types(explored, monkeypatch):
    db, _, _ = explored
    at = open_app(monkeypatch, db)
    at.switch_page("views/sql.py").run()
    at.text_area[0].set_value("SELECT x'00ff' AS b, 1 AS n UNION ALL SELECT 'text', 2.5")
    at.button[0].click().run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 2
