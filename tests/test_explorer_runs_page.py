"""The Runs page over a long run list (AppTest): one page of rows at a time, the store
read in bulk and only again when it changed, columns of choice, tags, links."""

from __future__ import annotations

import pandas as pd
import pytest
import streamlit as st
from helpers.explorer import APP
from helpers.replay import replay, source_run
from sqlalchemy import event
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest

from hlbd.store import Store, connect

TAGS = (["baseline", "sweep"], ["sweep"], [])   # run i has TAGS[i % 3]


@pytest.fixture(scope="module")
def listed(databases, tmp_path_factory):
    """Two databases of finished runs (each a real tiny run recorded again, helpers/
    replay.py): 6 runs and 60 runs, run i tagged TAGS[i % 3]; yields
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
    for count in (6, 60):
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


def test_a_page_load_sends_as_many_queries_for_60_runs_as_for_6(listed, monkeypatch):
    """The run list is read in bulk: a run more is a row more, not queries more (the
    page used to read each run's record, epochs and validation losses one at a time)."""
    sent = {}
    for count, (db, _) in listed.items():
        st.cache_data.clear()
        st.cache_resource.clear()
        with Statements() as statements:
            at = load(monkeypatch, db)
        assert not at.exception
        sent[count] = len(statements.sent)
    assert sent[60] == sent[6]


def test_later_loads_ask_the_store_only_whether_it_changed(listed, monkeypatch):
    """Every new session (a reload) gets the rows read once; the store is only asked
    for its change marks, the same few statements each time, and nothing the server
    keeps grows with the loads."""
    import reads  # app/ is on the path once the app has run
    import run_list

    db, _ = listed[60]
    st.cache_data.clear()
    st.cache_resource.clear()
    assert not load(monkeypatch, db).exception
    monkeypatch.setattr(run_list, "LIVE_TTL", 0.0)   # every load asks the store
    sent, held = [], []
    for _ in range(4):
        with Statements() as statements:
            at = load(monkeypatch, db)
        assert not at.exception
        sent.append(statements.sent)
        kept = reads.run_list(connect.resolve_db_url(str(db)))
        held.append((len(kept._rows), kept.generation))
    assert all(s == sent[0] for s in sent)
    assert all("FROM epochs" not in s or "count" in s for s in sent[0])
    assert held == [held[0]] * 4 and held[0][1] == 1


