"""`hlbd sql` and run_query: read-only by the connection, time-limited, README examples run.

Every test here reads one real database: a tiny run resumed from an earlier checkpoint
(so it has superseded epochs), a run whose gradients exploded, and an imported report.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import db_snapshot, tiny_config

from hlbd import database, importer
from hlbd.cli import main
from hlbd.errors import QueryError, QueryInterrupted
from hlbd.query import run_query
from hlbd.runner import resume_checkpoint, start_run
from hlbd.store import Store

README = Path(__file__).resolve().parents[1] / "README.md"
RUNAWAY = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
           "SELECT count(*) FROM c")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A real database: a resumed run, an exploding run and an imported report."""
    root = tmp_path_factory.mktemp("sqldb")
    path = root / "runs.db"
    store = Store.open(str(path))
    runs_root = root / "runs"
    resumed = start_run(tiny_config(epochs=3, save_interval=1), store, runs_root=runs_root,
                        progress=False)
    # Continue from epoch 1 as if the process had died then: epochs 2 and 3 of the
    # first attempt stay in `epochs`, superseded by the second segment.
    resume_checkpoint(store, resumed.run_dir / "checkpoint_epoch_1.pt", epochs=3,
                      progress=False)
    wild = start_run(tiny_config(epochs=2, lr=50.0, max_grad_norm=0), store,
                     runs_root=runs_root, progress=False)
    report = json.loads((wild.run_dir / "experiment_report.json").read_text())
    old = root / "old_run" / "experiment_report.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"control_losses": [report["control_losses"][0], float("nan")],
                               "learning_rates": report["learning_rates"],
                               "dataset_stats": report["dataset_stats"]}))
    importer.import_reports(store, old)
    store.close()
    run_query(str(path), "SELECT 1")  # a reader's -wal/-shm exist before any snapshot
    return {"path": path, "resumed": resumed.run_id, "wild": wild.run_id}


WRITES = {
    "insert": "INSERT INTO runs (run_id, name, status, created_at, config, dataset_stats, "
              "source) VALUES ('x', 'x', 'finished', '2020-01-01', '{}', '{}', 'hlbd')",
    "insert select": "INSERT INTO epochs SELECT * FROM epochs",
    "replace": "REPLACE INTO anomalies (id, run_id, segment, rule, message, created_at) "
               "VALUES (1, 'x', 1, 'r', 'm', '2020-01-01')",
    "update": "UPDATE epochs SET loss = 0",
    "update via cte": "WITH z AS (SELECT 1) UPDATE runs SET name = 'x'",
    "delete": "DELETE FROM steps",
    "drop table": "DROP TABLE epochs",
    "drop view": "DROP VIEW epoch_metrics",
    "create table": "CREATE TABLE t (x)",
    "create temp table": "CREATE TEMP TABLE t AS SELECT * FROM runs",
    "create index": "CREATE INDEX i ON epochs (loss)",
    "create trigger": "CREATE TEMP TRIGGER t AFTER INSERT ON runs BEGIN SELECT 1; END",
    "alter table": "ALTER TABLE runs ADD COLUMN x",
    "attach new file": "ATTACH DATABASE '{dir}/attached.db' AS a",
    "attach uri rwc": "ATTACH DATABASE 'file:{dir}/attached_uri.db?mode=rwc' AS a",
    "attach memory": "ATTACH DATABASE ':memory:' AS a",
    "pragma journal_mode": "PRAGMA journal_mode = DELETE",
    "pragma query_only off": "PRAGMA query_only = 0",
    "pragma user_version": "PRAGMA user_version = 7",
    "pragma writable_schema": "PRAGMA writable_schema = 1",
    "pragma wal_checkpoint": "PRAGMA wal_checkpoint(TRUNCATE)",
    "vacuum": "VACUUM",
    "vacuum into": "VACUUM INTO '{dir}/copy.db'",
    "reindex": "REINDEX",
    "analyze": "ANALYZE",
    "load_extension": "SELECT load_extension('{dir}/nothing.so')",
}


@pytest.mark.parametrize("form", sorted(WRITES))
def test_every_write_form_is_refused_and_the_store_is_unchanged(db, form):
    sql = WRITES[form].replace("{dir}", str(db["path"].parent))
    before = db_snapshot(db["path"])
    with pytest.raises(QueryError, match="^refused: the database is open read-only") as err:
        run_query(str(db["path"]), sql)
    assert not isinstance(err.value, QueryInterrupted)
    assert db_snapshot(db["path"]) == before  # no file created by ATTACH / VACUUM INTO either


def test_the_cli_refuses_a_write_with_one_line_and_exit_status_1(db):
    before = db_snapshot(db["path"])
    for sql in ("DROP TABLE runs", f"ATTACH '{db['path'].parent}/cli.db' AS x"):
        result = subprocess.run([sys.executable, "-m", "hlbd", "sql", sql, "--db",
                                 str(db["path"])], check=False, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 1
        assert result.stderr.startswith("Error: refused: the database is open read-only")
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert db_snapshot(db["path"]) == before


def test_a_runaway_recursive_query_is_stopped_by_the_time_limit(db):
    engine = database.read_engine(database.resolve_db_url(str(db["path"])))
    with pytest.raises(QueryInterrupted, match="ran past the 0.2 s time limit"):
        run_query(engine, RUNAWAY, time_limit=0.2)
    # The connection it ran on is usable again afterwards.
    assert run_query(engine, "SELECT count(*) FROM runs").rows == [(3,)]
    engine.dispose()

    result = CliRunner().invoke(main, ["sql", RUNAWAY, "--time-limit", "0.2",
                                       "--db", str(db["path"])])
    assert result.exit_code == 1
    assert "Error: query stopped: it ran past the 0.2 s time limit" in result.output


def test_a_runaway_query_streaming_rows_is_stopped_too(db):
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
    with pytest.raises(QueryInterrupted):
        run_query(str(db["path"]), endless, time_limit=0.2)
    assert run_query(str(db["path"]), endless, max_rows=5).rows == [(i,) for i in range(1, 6)]


def test_reading_statements_run(db):
    path = str(db["path"])
    assert run_query(path, "PRAGMA query_only").rows == [(1,)]
    columns = [r[1] for r in run_query(path, "PRAGMA table_info(epoch_metrics)").rows]
    assert {"run_id", "epoch", "loss", "grad_norm", "lr"} <= set(columns)
    plan = run_query(path, "EXPLAIN QUERY PLAN SELECT * FROM epoch_metrics")
    assert plan.rows


def test_empty_or_invalid_sql_gets_a_clear_error(db):
    with pytest.raises(QueryError, match="no SQL given"):
        run_query(str(db["path"]), "   ")
    with pytest.raises(QueryError, match='query failed: near "SELEC": syntax error'):
        run_query(str(db["path"]), "SELEC 1")
    with pytest.raises(QueryError, match="no such table: nope"):
        run_query(str(db["path"]), "SELECT * FROM nope")


def test_a_missing_database_is_refused_without_creating_it(tmp_path):
    result = CliRunner().invoke(main, ["sql", "SELECT 1", "--db", str(tmp_path / "no.db")])
    assert result.exit_code == 1 and "no database at" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_path_with_url_characters_is_opened_read_only_as_itself(db, tmp_path):
    # In a SQLite URI '#' ends the file name: unescaped, mode=ro would be lost.
    odd = tmp_path / "runs #1&mode=rwc" / "runs.db"
    odd.parent.mkdir()
    shutil.copy(db["path"], odd)
    assert run_query(str(odd), "SELECT count(*) FROM runs").rows == [(3,)]
    with pytest.raises(QueryError, match="^refused"):
        run_query(str(odd), "DELETE FROM runs")
    assert sorted(p.name for p in tmp_path.iterdir()) == [odd.parent.name]


def test_table_csv_and_json_show_the_stored_numbers(db):
    sql = ("SELECT epoch, loss, grad_norm, lr FROM epoch_metrics "
           f"WHERE run_id = '{db['resumed']}' ORDER BY epoch")
    stored = [tuple(r) for r in sqlite3.connect(db["path"]).execute(sql)]
    args = ["sql", sql, "--db", str(db["path"])]

    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["epoch", "loss", "grad_norm", "lr"]
    assert [line.split() for line in lines[2:]] == [
        [str(e), f"{loss:.6g}", f"{g:.6g}", f"{lr:.6g}"] for e, loss, g, lr in stored]

    as_csv = CliRunner().invoke(main, [*args, "--csv"])
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0] == ["epoch", "loss", "grad_norm", "lr"]
    assert [(int(r[0]), *map(float, r[1:])) for r in rows[1:]] == stored

    as_json = CliRunner().invoke(main, [*args, "--json"])
    assert [tuple(r.values()) for r in json.loads(as_json.stdout)] == stored


def test_null_stays_null_in_every_format(db):
    sql = "SELECT epoch, grad_norm FROM epoch_metrics WHERE grad_norm IS NULL ORDER BY epoch"
    args = ["sql", sql, "--db", str(db["path"])]
    assert json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout) == [
        {"epoch": 1, "grad_norm": None}, {"epoch": 2, "grad_norm": None}]
    assert CliRunner().invoke(main, [*args, "--csv"]).stdout == "epoch,grad_norm\n1,\n2,\n"
    table = CliRunner().invoke(main, args).stdout.splitlines()
    assert [line.split() for line in table[2:]] == [["1", "-"], ["2", "-"]]


def test_max_rows_stops_early_and_says_so(db):
    result = CliRunner().invoke(main, ["sql", "SELECT step FROM steps ORDER BY step",
                                       "--max-rows", "2", "--csv", "--db", str(db["path"])])
    assert result.exit_code == 0
    assert result.stdout == "step\n1\n1\n"  # two runs' first steps
    assert "stopped at --max-rows 2" in result.stderr


def test_json_refuses_duplicate_column_names(db):
    result = CliRunner().invoke(main, ["sql", "SELECT 1 AS a, 2 AS a", "--json",
                                       "--db", str(db["path"])])
    assert result.exit_code == 1 and "name them with AS" in result.output


def readme_statements() -> list[str]:
    """Every statement of every ```sql block in the README."""
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.DOTALL)
    statements = []
    for block in blocks:
        code = "\n".join(line for line in block.splitlines()
                         if not line.lstrip().startswith("--"))
        statements += [s.strip() for s in code.split(";") if s.strip()]
    return statements


def test_the_readme_has_the_promised_examples():
    text = " ".join(readme_statements())
    assert len(readme_statements()) >= 9
    for needle in ("min(loss)", "grad_norm > 10", "lr_a", "json_each", "LIKE",
                   "superseded_by IS NOT NULL", "FROM epochs e"):
        assert needle in text


@pytest.mark.parametrize("index", range(len(readme_statements())))
def test_each_readme_query_runs_and_finds_rows_in_a_real_database(db, index):
    sql = (readme_statements()[index].replace("RUN_ID", db["resumed"])
           .replace("RUN_A", db["resumed"]).replace("RUN_B", db["wild"]))
    result = run_query(str(db["path"]), sql)
    assert result.columns and result.rows, sql
