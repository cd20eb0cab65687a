"""The Runs page over a long run list (AppTest): one page of rows at a time, the store
read in bulk and only again when it changed, columns of choice, tags, links."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import streamlit as st
from helpers.explorer import APP
from helpers.replay import replay, source_run
from sqlalchemy import event
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest

from hlbd.store import Store

TAGS = (["baseline", "sweep"], ["sweep"], [])   # run i has TAGS[i % 3]


@pytest.fixture(scope="module")
def listed(databases, tmp_path_factory):
    """Databases of finished runs (each a real tiny run recorded again, helpers/
    replay.py): 6, 60 and 600 runs, run i tagged TAGS[i % 3]; yields
    {count: (db, ids oldest first)}."""
    root = tmp_path_factory.mktemp("listed")
    db = databases.new(root / "source")
    store = Store.open(db)
    try:
        source = source_run(store, root)
    finally:
        store.close()
        databases.drop(db)
    made = {}
    for count in (6, 60, 600):
        db = databases.new(root / str(count))
        store = Store.open(db)
        try:
            made[count] = (db, replay(store, source, count, lambda i: TAGS[i % 3]))
        finally:
            store.close()
    yield made
    for db, _ in made.values():
        databases.drop(db)


def load(monkeypatch, db, **params) -> AppTest:
    """A new session's first run of the Runs page, the URL carrying ``params``."""
    monkeypatch.setenv("HLBD_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params.update(params)
    return at.run()


def table(at: AppTest) -> pd.DataFrame:
    return at.dataframe[0].value


class Statements:
    """The SQL statements every engine in this process sends while counting."""

    def __init__(self):
        self.sent: list[str] = []

    def __enter__(self):
        event.listen(Engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_):
        event.remove(Engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, *_):
        self.sent.append(statement)


def test_the_table_holds_one_page_of_rows_however_many_runs(listed, monkeypatch):
    db, ids = listed[60]
    newest_first = ids[::-1]
    at = load(monkeypatch, db, per="25")
    assert not at.exception
    assert table(at)["id"].tolist() == newest_first[:25]
    at = load(monkeypatch, db, per="25", page="3")
    assert table(at)["id"].tolist() == newest_first[50:]
    assert any("60 of 60 runs, rows 51-60" in c.value for c in at.caption)


def test_a_page_load_sends_as_many_queries_for_60_runs_as_for_6(listed, monkeypatch):
    """The run list is read in bulk: a run more is a row more, not queries more (the
    page used to read each run's record, epochs and validation losses one at a time)."""
    sent = {}
    for count in (6, 60):
        db, _ = listed[count]
        st.cache_data.clear()
        st.cache_resource.clear()
        with Statements() as statements:
            at = load(monkeypatch, db)
        assert not at.exception
        sent[count] = len(statements.sent)
    assert sent[60] == sent[6]


def test_reloads_send_as_few_statements_for_600_runs_as_for_6(listed, monkeypatch):
    """Each reload (a new session) once the run list may be old asks the store whether
    it changed, the same few statements each time, whatever the number of runs. The
    page used to read every run again through per-run caches of 500 entries: past 500
    runs each load missed them all, and the server's memory grew with every reload."""
    sent = {}
    for count in (6, 600):
        db, _ = listed[count]
        st.cache_data.clear()
        st.cache_resource.clear()
        assert not load(monkeypatch, db).exception
        import reads  # app/ is on the path once the app has run

        sent[count] = []
        for _ in range(2):
            time.sleep(reads.LIVE_TTL + 0.1)   # the run list may be read again now
            with Statements() as statements:
                assert not load(monkeypatch, db).exception
            sent[count].append(len(statements.sent))
    assert sent[600] == sent[6]
    assert sent[6][0] == sent[6][1]


def test_a_link_reproduces_filter_tags_sort_columns_and_page(listed, monkeypatch):
    db, ids = listed[60]
    store = Store.open_read_only(db)
    try:
        runs = {r["run_id"]: r for r in store.list_runs()}
    finally:
        store.close()
    params = {"q": "run-1", "tag": "sweep", "sort": "-name", "cols": "tags,best_val_loss,seed",
              "per": "25"}
    at = load(monkeypatch, db, **params)
    assert not at.exception
    frame = table(at)
    assert list(frame.columns) == ["name", "detail", "tags", "best val loss", "seed"]
    # run-1, run-10 ... run-19 that are tagged sweep, by name descending.
    kept = sorted((run_id for i, run_id in enumerate(ids)
                   if "run-1" in f"run-{i}" and "sweep" in TAGS[i % 3]),
                  key=lambda r: runs[r]["name"], reverse=True)
    assert frame["name"].tolist() == [runs[r]["name"] for r in kept]
    for name, best, tags in zip(frame["name"], frame["best val loss"], frame["tags"],
                                strict=True):
        run = next(r for r in runs.values() if r["name"] == name)
        assert best == pytest.approx(run["best_val_loss"])
        assert list(tags) == run["tags"]
    assert at.multiselect(key="tag_filter").value == ["sweep"]
    assert at.text_input(key="text_filter").value == "run-1"
    # The page writes the same view back: the link stays as it was.
    assert {k: at.query_params[k] for k in params} == params


def test_a_link_with_unreadable_statuses_or_columns_shows_the_defaults(listed,
                                                                      monkeypatch):
    """``status=zzz`` used to empty the Status filter (no run shown) and ``cols=nope,name``
    the Columns picker: a value none of whose words is a status or a column is ignored,
    like a garbage ``per``; the readable words of one are kept."""
    db, ids = listed[6]
    default = load(monkeypatch, db)
    at = load(monkeypatch, db, status="zzz", cols="nope,name")
    assert not at.exception
    assert at.multiselect(key="status_filter").value == \
        default.multiselect(key="status_filter").value
    assert at.multiselect(key="runs_columns").value == \
        default.multiselect(key="runs_columns").value
    assert sorted(table(at)["id"]) == sorted(ids)
    assert "status" not in at.query_params and "cols" not in at.query_params
    at = load(monkeypatch, db, status="zzz,finished", cols="nope,seed")
    assert at.multiselect(key="status_filter").value == ["finished"]
    assert at.multiselect(key="runs_columns").value == ["seed"]
    assert dict(at.query_params) == {"status": "finished", "cols": "seed"}


def test_the_tag_filter_keeps_the_runs_with_every_tag_picked(listed, monkeypatch):
    db, ids = listed[60]
    at = load(monkeypatch, db, per="100")
    at.multiselect(key="tag_filter").set_value(["baseline", "sweep"]).run()
    assert sorted(table(at)["id"]) == sorted(ids[::3])
    assert at.query_params["tag"] == "baseline,sweep"
    at.multiselect(key="tag_filter").set_value(["sweep"]).run()
    assert sorted(table(at)["id"]) == sorted(i for n, i in enumerate(ids) if n % 3 != 2)


def test_any_summary_or_config_key_is_a_column_in_the_order_picked(listed, monkeypatch):
    db, _ = listed[6]
    store = Store.open_read_only(db)
    try:
        runs = {r["run_id"]: r for r in store.list_runs()}
    finally:
        store.close()
    at = load(monkeypatch, db)
    at.multiselect(key="runs_columns").set_value(["best_exact", "d_model", "tags", "id"]).run()
    frame = table(at)
    # The name first (pinned), the link to its detail, then the columns as picked.
    assert list(frame.columns) == ["name", "detail", "best exact", "d_model", "tags", "id"]
    assert at.query_params["cols"] == "best_exact,d_model,tags,id"
    for _, row in frame.iterrows():
        run = runs[row["id"]]
        assert row["best exact"] == pytest.approx(run["best_exact"]) or (
            run["best_exact"] is None and pd.isna(row["best exact"]))
        assert row["d_model"] == run["config"]["d_model"]
        assert row["detail"] == f"run?run={row['id']}"
    assert not math.isnan(frame["best exact"].iloc[0])


def test_the_sidebar_offers_the_newest_runs_and_those_picked_not_every_run(listed,
                                                                            monkeypatch):
    """Its options go to the browser on every run of the page: with thousands of runs,
    the newest PICKER_RUNS and the picked ones; the Runs table picks any other."""
    db, ids = listed[60]
    assert not load(monkeypatch, db).exception
    import sidebar  # app/ is on the path once the app has run

    monkeypatch.setattr(sidebar, "PICKER_RUNS", 10)
    at = load(monkeypatch, db, runs=ids[0][:8])   # the oldest run, picked by a link
    offered = at.sidebar.multiselect(key="picked").options
    assert len(offered) == 11
    assert [o.split(" · ")[0] for o in offered] == ["run-0"] + [f"run-{i}" for i in
                                                                range(59, 49, -1)]


def test_a_session_keeps_a_page_of_runs_not_every_run(listed, monkeypatch):
    """A reload leaves the old session on the server for a while (Streamlit keeps a
    closed session 120 s): what each keeps must not grow with the runs, or every reload
    adds to the server's memory. The old page's sessions each kept every run (its ids
    among them): its server grew 2.2 MB a reload on 1,000 runs, 25 MB on 5,000, and
    stayed flat when closed sessions were let go at once (bench/explorer_runs_page.py)."""
    db, ids = listed[600]
    at = load(monkeypatch, db)
    kept = repr(at.session_state.to_dict())
    assert sum(run_id in kept for run_id in ids) <= 50   # the page's rows
