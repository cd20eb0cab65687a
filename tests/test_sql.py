"""`hlbd sql` and run_query: read-only by the connection, time-limited, README examples run.

Every test here reads one real database: a tiny run resumed from an earlier checkpoint
(so it has superseded epochs), a run whose gradients exploded, and an imported report.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers.backends import db_snapshot, postgres_only, sqlite_only
from helpers.backends import rows as db_rows
from helpers.tiny import tiny_config
from sqlalchemy.engine import make_url

from hlbd import importer
from hlbd.cli import main
from hlbd.data import BUNDLED
from hlbd.errors import QueryError, QueryInterrupted
from hlbd.runner import resume_checkpoint, start_run
from hlbd.store import Store, connect
from hlbd.store.query import run_query
from hlbd.trained import choose_checkpoint, evaluate_file

README = Path(__file__).resolve().parents[1] / "README.md"
RUNAWAY = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
           "SELECT count(*) FROM c")


@pytest.fixture(scope="module")
def db(backend, databases, tmp_path_factory):
    """A real database: a resumed run (evaluated once by hlbd eval), an exploding run, an
    imported report and a loop of one's own with two parameter groups (its `lr/1` is in
    metric_points)."""
    root = tmp_path_factory.mktemp("sqldb")
    url = databases.new(root)
    path = Path(url) if backend == "sqlite" else url  # a file, or a server's URL
    store = Store.open(str(path))
    runs_root = root / "runs"
    resumed = start_run(tiny_config(epochs=3, save_interval=1), store, runs_root=runs_root,
                        progress=False)
    # Continue from epoch 1 as if the process had died then: epochs 2 and 3 of the
    # first segment stay in `epochs`, superseded by the second segment.
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
    # An evaluation of the resumed run (hlbd eval), for the evaluations table's example.
    evaluate_file(store, resumed.run_id, choose_checkpoint(store, resumed.run_id), BUNDLED,
                  max_pairs=4, device=torch.device("cpu"))
    store.close()
    own = own_loop_run(str(path), root / "own")
    run_query(str(path), "SELECT 1")  # a reader's -wal/-shm exist before any snapshot
    yield {"path": path, "resumed": resumed.run_id, "wild": wild.run_id, "own": own}
    databases.drop(url)


def own_loop_run(db: str, runs_dir: Path) -> str:
    """Three optimizer steps of a linear model whose bias has its own LR."""
    import torch

    import hlbd

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.05}],
                          lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with hlbd.init("own", db=db, runs_dir=str(runs_dir)) as run:
        run.watch(opt)
        for _ in range(3):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            run.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            run.log({"loss": loss})
        run.end_epoch()
    return run.id


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


@sqlite_only
@pytest.mark.parametrize("form", sorted(WRITES))
def test_every_write_form_is_refused_and_the_store_is_unchanged(db, form):
    sql = WRITES[form].replace("{dir}", str(db["path"].parent))
    before = db_snapshot(db["path"])
    with pytest.raises(QueryError, match="^refused: the database is open read-only") as err:
        run_query(str(db["path"]), sql)
    assert not isinstance(err.value, QueryInterrupted)
    assert db_snapshot(db["path"]) == before  # no file created by ATTACH / VACUUM INTO either


# The SQLite forms above (most are not even PostgreSQL syntax: refused all the same) and
# the tricks a server allows: ending the READ ONLY transaction, changing the session,
# running a program, calling functions that act. {victim}: another session's pid.
PG_WRITES = {
    **WRITES,
    "commit then delete": "COMMIT; DELETE FROM steps",
    "session read write": "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; "
                          "DELETE FROM steps",
    "set_config read write": "SELECT set_config('transaction_read_only', 'off', false)",
    "copy to program": "COPY (SELECT 1) TO PROGRAM 'touch {dir}/program_ran'",
    "data-modifying cte": "WITH d AS (DELETE FROM steps RETURNING *) SELECT count(*) FROM d",
    "select for update": "SELECT * FROM runs FOR UPDATE",
    "nextval": "SELECT nextval('checkpoints_id_seq')",
    "terminate backend": "SELECT pg_terminate_backend({victim})",
    "lo_import": "SELECT lo_import('/etc/hostname')",
    "analyze table": "ANALYZE runs",
    "pg_sleep": "SELECT pg_sleep(30)",
}


@pytest.fixture(scope="module")
def reader_url(db, pg_server):
    """The database as the SELECT-only role of the README's recipe."""
    return pg_server().reader_url(db["path"])


@postgres_only
@pytest.mark.parametrize("role", ["store role", "select-only role"])
@pytest.mark.parametrize("form", sorted(PG_WRITES))
def test_every_write_attempt_is_refused_on_postgresql_and_the_store_is_unchanged(
        db, reader_url, tmp_path, role, form):
    """READ ONLY, one statement, a query only; the role decides what functions may do
    to other sessions, so the store's own role may only end its own session here."""
    url = db["path"] if role == "store role" else reader_url
    victim_engine = connect.write_engine(db["path"])  # a trainer's session
    victim = victim_engine.connect()
    victim_pid = victim.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    victim.rollback()
    sql = (PG_WRITES[form].replace("{dir}", str(tmp_path))
           .replace("{victim}", str(victim_pid) if role == "select-only role"
                    else "pg_backend_pid()"))
    before = db_snapshot(db["path"])
    try:
        with pytest.raises(QueryError) as err:
            run_query(url, sql, time_limit=1)
        if form == "pg_sleep":
            assert isinstance(err.value, QueryInterrupted)
        else:
            assert not isinstance(err.value, QueryInterrupted)
            assert str(err.value).startswith(("refused: ", "query failed: "))
        assert db_snapshot(db["path"]) == before
        assert not (tmp_path / "program_ran").exists()
        assert victim.exec_driver_sql("SELECT 1").scalar() == 1  # still connected
    finally:
        victim.close()
        victim_engine.dispose()


@postgres_only
def test_a_setting_made_by_one_query_does_not_outlive_it(db):
    engine = connect.read_engine(connect.resolve_db_url(db["path"]))
    assert run_query(engine, "SELECT set_config('default_transaction_read_only', 'off', "
                             "false), set_config('application_name', 'leaked', false)"
                     ).rows == [("off", "leaked")]
    assert run_query(engine, "SELECT pg_advisory_lock(7)").rows
    assert run_query(engine, "SELECT current_setting('transaction_read_only'), "
                             "current_setting('application_name'), "
                             "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')"
                     ).rows == [("on", "", 0)]
    engine.dispose()


@postgres_only
def test_user_sql_is_refused_to_a_superuser_role(db):
    admin = os.environ.get("HLBD_TEST_PG_ADMIN")  # .ci/pg-server sets it
    if not admin:
        pytest.skip("HLBD_TEST_PG_ADMIN (a superuser URL of the test server) is not set")
    url = make_url(admin).set(database=make_url(db["path"]).database).render_as_string(
        hide_password=False)
    with pytest.raises(QueryError, match="^refused: role 'hlbd_admin' is a PostgreSQL "
                                         "superuser"):
        run_query(url, "SELECT 1")


@postgres_only
def test_the_cli_refuses_on_postgresql_with_one_line_and_exit_status_1(db):
    before = db_snapshot(db["path"])
    for sql, said in (("DROP TABLE runs", ("Error: refused: the database is open read-only "
                                          "here and runs one query (SELECT, WITH, VALUES "
                                          "or TABLE), not DROP")),
                      ("SELECT 1; DELETE FROM runs", "Error: refused: one statement per call"),
                      ("SELECT * FROM runs FOR UPDATE",
                       "Error: refused: the database is open read-only here; only")):
        result = subprocess.run([sys.executable, "-m", "hlbd", "sql", sql, "--db",
                                 db["path"]], check=False, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith(said), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert db_snapshot(db["path"]) == before


@sqlite_only
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
    engine = connect.read_engine(connect.resolve_db_url(str(db["path"])))
    with pytest.raises(QueryInterrupted, match="ran past the 0.2 s time limit"):
        run_query(engine, RUNAWAY, time_limit=0.2)
    # The connection it ran on is usable again afterwards.
    assert run_query(engine, "SELECT count(*) FROM runs").rows == [(4,)]
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


@sqlite_only
def test_reading_statements_run(db):
    path = str(db["path"])
    assert run_query(path, "PRAGMA query_only").rows == [(1,)]
    columns = [r[1] for r in run_query(path, "PRAGMA table_info(epoch_metrics)").rows]
    assert {"run_id", "epoch", "loss", "grad_norm", "lr"} <= set(columns)
    plan = run_query(path, "EXPLAIN QUERY PLAN SELECT * FROM epoch_metrics")
    assert plan.rows


@sqlite_only
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


@sqlite_only
def test_a_path_with_url_characters_is_opened_read_only_as_itself(db, tmp_path):
    # In a SQLite URI '#' ends the file name: unescaped, mode=ro would be lost.
    odd = tmp_path / "runs #1&mode=rwc" / "runs.db"
    odd.parent.mkdir()
    shutil.copy(db["path"], odd)
    assert run_query(str(odd), "SELECT count(*) FROM runs").rows == [(4,)]
    with pytest.raises(QueryError, match="^refused"):
        run_query(str(odd), "DELETE FROM runs")
    assert sorted(p.name for p in tmp_path.iterdir()) == [odd.parent.name]


def test_table_csv_and_json_show_the_stored_numbers(db):
    sql = ("SELECT epoch, loss, grad_norm, lr FROM epoch_metrics "
           f"WHERE run_id = '{db['resumed']}' ORDER BY epoch")
    stored = db_rows(db["path"], sql)
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


def readme_queries() -> list[tuple[str, str | None]]:
    """Every statement of every ```sql block in the README, with the one database it is
    for when its comment ends "(SQLite)" or "(PostgreSQL)" (else None: both)."""
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.DOTALL)
    queries = []
    for block in blocks:
        comments, code = [], []
        for line in [*block.splitlines(), ";"]:
            if line.lstrip().startswith("--"):
                comments.append(line.strip())
                continue
            code.append(line)
            if line.rstrip().endswith(";"):
                sql = "\n".join(code).strip().rstrip(";").strip()
                said = " ".join(comments)
                if sql:
                    queries.append((sql, "sqlite" if said.endswith("(SQLite)") else
                                    "postgresql" if said.endswith("(PostgreSQL)") else None))
                comments, code = [], []
    return queries


def readme_statements() -> list[str]:
    return [code for code, _ in readme_queries()]


def test_the_readme_has_the_promised_examples():
    text = " ".join(readme_statements())
    assert len(readme_statements()) >= 9
    for needle in ("min(loss)", "grad_norm > 10", "lr_a", "json_each", "LIKE",
                   "superseded_by IS NOT NULL", "FROM epochs e"):
        assert needle in text


@pytest.mark.parametrize("index", range(len(readme_queries())))
def test_each_readme_query_runs_and_finds_rows_in_a_real_database(db, backend, index):
    code, only = readme_queries()[index]
    sql = (code.replace("OWN_RUN_ID", db["own"]).replace("RUN_ID", db["resumed"])
           .replace("RUN_A", db["resumed"]).replace("RUN_B", db["wild"]))
    if only not in (None, backend):  # the README says which database it is written for
        with pytest.raises(QueryError):
            run_query(str(db["path"]), sql)
        return
    result = run_query(str(db["path"]), sql)
    assert result.columns and result.rows, sql


def test_json_writes_sums_as_numbers_on_every_backend(db):
    # PostgreSQL sums integers into numeric (a Decimal in Python): still a JSON number.
    expected = db_rows(db["path"], "SELECT count(*) FROM steps")[0][0]
    result = CliRunner().invoke(main, ["sql", "SELECT sum(CAST(1 AS bigint)) AS n FROM steps", "--json",
                                       "--db", str(db["path"])])
    assert json.loads(result.stdout) == [{"n": expected}]
