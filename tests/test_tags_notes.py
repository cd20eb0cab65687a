"""Tags and notes: what a person says of a run, set by hlbd.init, `hlbd tag` and `hlbd note`
at any time, shown by `hlbd runs` / `show`, carried by `hlbd copy`, kept by the upgrade."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from helpers.backends import sqlite_at

import hlbd
from hlbd.cli import main
from hlbd.errors import InvalidTagError
from hlbd.store import Store, connect, schema


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_tags_from_init_and_the_cli_and_notes_show_in_runs_and_show(db_url, tmp_path):
    with hlbd.init(name="tagged", db=db_url, runs_dir=str(tmp_path),
                   tags=["baseline", "gru"]) as run:
        run.log({"loss": 1.0})
    assert cli("tag", "--db", db_url, run.id[:6], "sweep-3", "gru").output.strip() == \
        f"{run.id}: baseline, gru, sweep-3"
    assert cli("tag", "--db", db_url, run.id, "--remove", "baseline").output.strip() == \
        f"{run.id}: gru, sweep-3"
    assert cli("note", "--db", db_url, run.id, "lr too high\nafter epoch 3").exit_code == 0
    store = Store.open_read_only(db_url)
    try:
        record = store.get_run(run.id)
        assert record["tags"] == ["gru", "sweep-3"]
        assert record["notes"] == "lr too high\nafter epoch 3"
        assert "tags" not in (record["extra"] or {})  # one place for them
    finally:
        store.close()
    listed = cli("runs", "--db", db_url).output
    assert "gru, sweep-3" in listed
    shown = cli("show", "--db", db_url, run.id).output
    assert "tags gru, sweep-3" in shown and "notes lr too high\\nafter epoch 3" in shown
    assert cli("note", "--db", db_url, run.id, "").exit_code == 0
    assert "notes" not in cli("show", "--db", db_url, run.id).output.split("\n")[3]


@pytest.mark.parametrize("bad", ["", "   ", "a,b", "x" * 65, "tab\there"])
def test_a_tag_that_cannot_be_stored_is_refused_and_nothing_changes(db_url, tmp_path, bad):
    with hlbd.init(db=db_url, runs_dir=str(tmp_path), tags=["kept"]) as run:
        pass
    result = cli("tag", "--db", db_url, run.id, "fine", bad)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "a tag is a non-empty text" in result.output
    store = Store.open_read_only(db_url)
    try:
        assert store.get_run(run.id)["tags"] == ["kept"]
    finally:
        store.close()
    with pytest.raises(InvalidTagError), hlbd.init(db=db_url, runs_dir=str(tmp_path),
                                                   tags=[bad]):
        pass
    with pytest.raises(ValueError):  # the API's contract for bad input
        hlbd.init(db=db_url, runs_dir=str(tmp_path), tags=[bad])


def test_tags_and_notes_changed_after_a_copy_travel_with_the_next_copy(db_url, tmp_path):
    with hlbd.init(db=db_url, runs_dir=str(tmp_path), tags=["a"]) as run:
        run.log({"loss": 1.0})
    other = str(tmp_path / "team.db")
    assert cli("copy", db_url, other).exit_code == 0
    cli("tag", "--db", db_url, run.id, "b")
    cli("note", "--db", db_url, run.id, "checked")
    result = cli("copy", db_url, other)
    assert result.exit_code == 0 and "brought up to date" in result.output, result.output
    copied = Store.open_read_only(other)
    try:
        assert copied.get_run(run.id)["tags"] == ["a", "b"]
        assert copied.get_run(run.id)["notes"] == "checked"
    finally:
        copied.close()


def test_the_upgrade_moves_tags_from_extra_into_their_column(tmp_path):
    old = tmp_path / "old.db"
    url = sqlite_at(old, "0009")
    with sqlite3.connect(old) as conn:
        for run_id, extra in (("own", {"recorded_by": "hlbd.Run", "tags": ["x", "y"]}),
                              ("none", {"recorded_by": "hlbd.Run", "tags": []}),
                              ("plain", None)):
            conn.execute("INSERT INTO runs (run_id, name, status, created_at, config, "
                         "dataset_stats, source, extra) VALUES (?, 'r', 'finished', "
                         "'2026-12-01 00:00:00.000000', '{}', '{}', 'hlbd', ?)",
                         (run_id, json.dumps(extra) if extra else None))
    engine = connect.write_engine(url)
    schema.upgrade(engine, url)
    engine.dispose()
    store = Store.open_read_only(str(old))
    try:
        runs = {r["run_id"]: r for r in store.list_runs()}
    finally:
        store.close()
    assert runs["own"]["tags"] == ["x", "y"] and runs["own"]["extra"] == {
        "recorded_by": "hlbd.Run"}
    assert runs["none"]["tags"] == [] and runs["plain"]["tags"] == []
