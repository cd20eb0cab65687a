"""Bad datasets and databases: one clear line naming the problem, non-zero exit, store intact."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from helpers.backends import db_snapshot

from hlbd.cli import main
from hlbd.errors import SchemaTooNewError
from hlbd.store import Store

FULL_SAMPLE = {"concept": "学习", **{f"level_{i}": {"k": f"v{i}"} for i in range(1, 9)}}

BAD_FILES = {
    "missing.json": (None, "dataset file not found"),
    "malformed.json": (b'{"data": {"m": [', "not JSON: Expecting value at line 1"),
    "latin1.json": ('{"data": {"m": [{"input": "caf\u00e9", "output": "x"}]}}'.encode("latin-1"),
                    "not UTF-8"),
    "unknown.json": (json.dumps({"rows": []}).encode(), "unknown dataset format"),
    "no_output.json": (json.dumps({"data": {"geometry": [{"input": "a", "output": "b"},
                                                         {"input": "c"}]}}).encode(),
                       "data['geometry'][1] is missing field 'output'"),
    "no_level.json": (json.dumps({"samples": [FULL_SAMPLE, {
        k: v for k, v in FULL_SAMPLE.items() if k != "level_5"}]}).encode(),
                      "samples[1] is missing field 'level_5'"),
    "empty.json": (json.dumps({"data": {"geometry": []}}).encode(), "dataset is empty"),
    "wrong_type.json": (json.dumps({"data": {"m": [{"input": 3, "output": "x"}]}}).encode(),
                        "data['m'][0].input must be a non-empty string"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_dataset_is_refused_with_one_line_naming_the_file(tmp_path, name, store,
                                                              db_url):
    content, message = BAD_FILES[name]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"data": {"m": [{"input": "1+1", "output": "2"}]}}))
    before = db_snapshot(db_url)["counts"]

    result = CliRunner().invoke(main, ["train", "--db", db_url,
                                       "--datasets", str(good), str(path), "--quiet",
                                       "--runs-dir", str(tmp_path / "r")])

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert str(path) in lines[0] and message in lines[0]
    assert db_snapshot(db_url)["counts"] == before
    assert not (tmp_path / "r").exists()


def test_database_from_a_newer_schema_is_refused(tmp_path):
    db = tmp_path / "runs.db"
    Store.open(str(db)).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    conn.commit()
    conn.close()

    with pytest.raises(SchemaTooNewError, match="newer hlbd"):
        Store.open(str(db))
    result = CliRunner().invoke(main, ["runs", "--db", str(db)])
    assert result.exit_code == 1
    assert "schema revision 'f00dfeed'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unknown_run_id_is_a_one_line_error(store, train_run, db_url):
    train_run(epochs=1)
    result = CliRunner().invoke(main, ["show", "nosuchrun", "--db", db_url])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: no run with id 'nosuchrun' in {store.url}; "
        "`hlbd runs` lists the runs")


def test_a_device_this_machine_lacks_is_refused_before_the_run_exists(tmp_path, store,
                                                                     db_url):
    # (It used to fail once the run existed, leaving a failed run behind.)
    result = CliRunner().invoke(main, ["train", "--db", db_url,
                                       "--device", "cuda:7", "--epochs", "1", "--quiet",
                                       "--runs-dir", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --device cuda:7: ")
    assert len(result.output.strip().splitlines()) == 1
    assert store.list_runs() == [] and not (tmp_path / "r").exists()


def test_a_run_folder_that_cannot_be_made_fails_the_run_not_leaves_it_running(tmp_path,
                                                                              store, db_url):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the runs folder should go")
    result = CliRunner().invoke(main, ["train", "--db", db_url,
                                       "--epochs", "1", "--quiet",
                                       "--runs-dir", str(blocker)])
    assert result.exit_code == 1
    (run,) = store.list_runs()
    assert run["status"] == "failed" and "not_a_dir" in run["error"]
    assert len(result.output.strip().splitlines()) == 2  # the run id, then the error
