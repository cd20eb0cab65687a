"""`hlbd import` and `hlbd export`: old reports in, effective history out, nothing invented.

The store always holds a real tiny run first, so "unchanged" means something; the
reports to import start from the report that run wrote.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.backends import db_snapshot
from helpers.backends import rows as db_rows
from helpers.tiny import tiny_config
from sqlalchemy.exc import IntegrityError

from hlbd import exporter, importer
from hlbd.cli import main
from hlbd.runner import resume_checkpoint, start_run
from hlbd.store import Store

LISTS = ("control_losses", "batch_losses", "grad_norms", "learning_rates")


@pytest.fixture(scope="module")
def trained_db(databases, tmp_path_factory):
    """A database holding one real tiny run (trained once), and the report it wrote."""
    root = tmp_path_factory.mktemp("trained")
    db = databases.new(root)
    store = Store.open(db)
    outcome = start_run(tiny_config(epochs=3), store, runs_root=root / "runs", progress=False)
    store.close()  # checkpoints the WAL: the file alone is the whole database
    report = json.loads((outcome.run_dir / "experiment_report.json").read_text())
    yield db, outcome.run_id, report
    databases.drop(db)


@pytest.fixture
def trained(trained_db, databases, tmp_path):
    """A fresh copy of that database for one test, opened as the store."""
    source, run_id, report = trained_db
    db = databases.copy(source, tmp_path)
    store = Store.open(db)
    yield {"store": store, "db": db, "run_id": run_id, "report": report}
    store.close()
    databases.drop(db)


def write(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def old_report(report: dict, **changes) -> dict:
    """The older tool's report: no run_id; ``changes`` set (None: drop) keys."""
    doc = {k: v for k, v in report.items() if k != "run_id"}
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def same_numbers(a: list, b: list) -> bool:
    """Equal lists where NaN equals NaN (as the JSON text of both shows)."""
    return json.dumps(a) == json.dumps(b)


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_report_without_grad_norms_is_imported_with_nulls_and_unknown_keys_kept(
        trained, tmp_path):
    report = trained["report"]
    doc = old_report(report, grad_norms=None, model_name="apt-small",
                     optimizer={"kind": "adamw", "betas": [0.9, 0.95]})
    path = write(tmp_path / "old_run" / "experiment_report.json", doc)

    result = cli("import", path, "--db", trained["db"])
    assert result.exit_code == 0, result.output
    assert "imported as run" in result.output and "not recorded: grad_norms" in result.output

    store = trained["store"]
    (run,) = [r for r in store.list_runs() if r["source"] == "imported"]
    assert run["name"] == "old_run" and run["status"] == "imported"
    assert run["source_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert run["dataset_stats"] == report["dataset_stats"]
    assert run["extra"]["report"]["model_name"] == "apt-small"
    assert run["extra"]["report"]["optimizer"] == {"kind": "adamw", "betas": [0.9, 0.95]}
    assert run["extra"]["report"]["timestamp"] == report["timestamp"]
    assert run["extra"]["imported_from"] == str(path.resolve())
    # It ran elsewhere, in a process not known: not the importer's.
    (segment,) = store.segments(run["run_id"])
    assert (segment["pid"], segment["hostname"]) == (None, None)

    epochs = store.epochs(run["run_id"])
    assert [e["loss"] for e in epochs] == report["control_losses"]
    assert [e["lr"] for e in epochs] == report["learning_rates"]
    assert [e["grad_norm"] for e in epochs] == [None] * 3  # missing stays missing
    for column in ("grad_norm_max", "grad_norm_min", "steps", "nonfinite_steps",
                   "token_accuracy", "wall_seconds", "tokens"):
        assert {e[column] for e in epochs} == {None}
    steps = store.steps(run["run_id"])
    assert [s["loss"] for s in steps] == report["batch_losses"]
    assert {(s["grad_norm"], s["lr"]) for s in steps} == {(None, None)}
    per_epoch = len(steps) // 3
    assert [s["epoch"] for s in steps] == [e for e in (1, 2, 3) for _ in range(per_epoch)]
    # In plain SQL the missing grad norm is NULL with its NaN flag off: "not recorded".
    assert db_rows(trained["db"], "SELECT count(*) FROM step_metrics WHERE run_id = :r AND "
                "grad_norm IS NULL AND NOT grad_norm_is_nan", r=run["run_id"]) == [
        (len(steps),)]


def test_export_of_an_import_gives_back_the_losses_nan_and_infinity_included(
        trained, tmp_path):
    report = trained["report"]
    losses = [report["control_losses"][0], math.nan, math.inf, report["control_losses"][2]]
    batch = [*report["batch_losses"][:5], math.nan, -math.inf, *report["batch_losses"][7:]]
    batch = batch[: len(batch) - len(batch) % 4]
    x = old_report(report, control_losses=losses, batch_losses=batch,
                   grad_norms=[*report["grad_norms"], None],
                   learning_rates=[*report["learning_rates"], 1e-5])
    path = write(tmp_path / "x" / "experiment_report.json", x)
    (outcome,) = importer.import_reports(trained["store"], path)

    exported = json.loads(cli("export", outcome.run_id, "--db", trained["db"]).stdout)
    for key in LISTS:
        assert same_numbers(exported[key], x[key]), key
    assert exported["dataset_stats"] == x["dataset_stats"]
    assert exported["run_id"] == outcome.run_id
    assert (exported["current_epoch"], exported["total_batches"]) == (4, len(batch))
    assert db_rows(trained["db"], "SELECT epoch, loss, loss_is_nan FROM epoch_metrics WHERE "
                "run_id = :r AND epoch IN (2, 3) ORDER BY epoch", r=outcome.run_id) == [
        (2, None, 1), (3, math.inf, 0)]


def test_a_real_runs_report_round_trips_through_another_store(trained, tmp_path, databases):
    other = Store.open(databases.new(tmp_path / "other"))
    path = write(tmp_path / "copy" / "experiment_report.json", trained["report"])
    (outcome,) = importer.import_reports(other, path, "copied")
    assert outcome.outcome == "imported"
    exported = exporter.export_report(other, outcome.run_id)
    original = exporter.export_report(trained["store"], trained["run_id"])
    for key in (*LISTS, "dataset_stats", "current_epoch", "total_batches"):
        assert exported[key] == trained["report"][key] == original[key], key
    other.close()


def test_importing_the_same_report_again_does_nothing_and_says_so(trained, tmp_path):
    path = write(tmp_path / "old" / "experiment_report.json",
                 old_report(trained["report"]))
    first = cli("import", path, "--name", "old-baseline", "--db", trained["db"])
    assert first.exit_code == 0 and "imported as run" in first.output
    before = db_snapshot(trained["db"])
    again = subprocess.run([sys.executable, "-m", "hlbd", "import", str(path), "--db",
                            trained["db"]], check=False, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0
    assert "already imported as run" in again.stdout and "nothing done" in again.stdout
    assert db_snapshot(trained["db"])["counts"] == before["counts"]
    names = [r["name"] for r in trained["store"].list_runs() if r["source"] == "imported"]
    assert names == ["old-baseline"]


def test_the_report_of_a_run_this_store_recorded_is_not_imported_twice(trained, tmp_path):
    path = write(tmp_path / "mine" / "experiment_report.json", trained["report"])
    before = db_snapshot(trained["db"])
    result = cli("import", path, "--db", trained["db"])
    assert result.exit_code == 0
    assert f"the report of run {trained['run_id']}, which this store" in result.output
    assert db_snapshot(trained["db"])["counts"] == before["counts"]


def test_a_folder_imports_every_report_under_it_in_one_go(trained, tmp_path):
    report = trained["report"]
    write(tmp_path / "old" / "a" / "experiment_report.json", old_report(report))
    write(tmp_path / "old" / "b" / "deep" / "experiment_report.json",
          old_report(report, grad_norms=None, batch_losses=None))
    write(tmp_path / "old" / "b" / "notes.json", {"not": "a report"})
    result = cli("import", tmp_path / "old", "--name", "legacy", "--db", trained["db"])
    assert result.exit_code == 0, result.output
    assert result.output.count("imported as run") == 2
    runs = {r["name"]: r for r in trained["store"].list_runs() if r["source"] == "imported"}
    assert set(runs) == {"legacy/a", "legacy/b/deep"}
    assert trained["store"].steps(runs["legacy/b/deep"]["run_id"]) == []


def test_nan_grad_norms_are_kept_as_nan_with_their_flag(trained, tmp_path):
    norms = [trained["report"]["grad_norms"][0], math.nan, trained["report"]["grad_norms"][2]]
    path = write(tmp_path / "nan" / "experiment_report.json",
                 old_report(trained["report"], grad_norms=norms))
    result = cli("import", path, "--db", trained["db"])
    assert result.exit_code == 0
    (run,) = [r for r in trained["store"].list_runs() if r["source"] == "imported"]
    stored = [e["grad_norm"] for e in trained["store"].epochs(run["run_id"])]
    assert stored[0] == norms[0] and math.isnan(stored[1]) and stored[2] == norms[2]
    assert "nan_not_stored" not in run["extra"]


def test_batch_losses_that_do_not_split_over_the_epochs_are_kept_not_placed(trained,
                                                                          tmp_path):
    batch = trained["report"]["batch_losses"][:-1]
    path = write(tmp_path / "odd" / "experiment_report.json",
                 old_report(trained["report"], batch_losses=batch))
    (outcome,) = importer.import_reports(trained["store"], path)
    assert trained["store"].steps(outcome.run_id) == []
    run = trained["store"].get_run(outcome.run_id)
    assert run["extra"]["report"]["batch_losses"] == batch
    assert "do not split evenly over 3 epochs" in outcome.parsed.notes[0]


BAD_REPORTS = {
    "not_json": ('{"control_losses": [1.0, 2.0', "not JSON: Expecting"),
    "not_utf8": (b'{"control_losses": [1.0], "name": "caf\xe9"}', "not UTF-8"),
    "a_list": ("[1.0, 2.0]", "expected a JSON object, found a list"),
    "empty_object": ("{}", "no control_losses"),
    "no_epochs": ({"control_losses": []}, "control_losses is empty"),
    "losses_a_string": ({"control_losses": "1.0, 2.0"},
                        "control_losses must be a list of numbers, found a string"),
    "loss_a_string": ({"control_losses": [1.0, "0.9"]},
                      'control_losses[1] must be a number or null, found a string "0.9"'),
    "loss_a_boolean": ({"control_losses": [1.0, True]},
                       "control_losses[1] must be a number or null, found a boolean"),
    "loss_a_list": ({"control_losses": [[1.0]]}, "control_losses[0] must be a number"),
    "norms_a_string": ({"control_losses": [1.0], "grad_norms": "n/a"},
                       "grad_norms must be a list of numbers, found a string"),
    "norms_longer": ({"control_losses": [1.0, 0.9], "grad_norms": [1.0, 1.1, 1.2]},
                     "grad_norms has 3 values but control_losses has 2"),
    "lrs_shorter": ({"control_losses": [1.0, 0.9], "learning_rates": [1e-3]},
                    "learning_rates has 1 values but control_losses has 2"),
    "batch_a_string": ({"control_losses": [1.0], "batch_losses": [1.0, "x"]},
                       "batch_losses[1] must be a number or null"),
    "stats_a_list": ({"control_losses": [1.0], "dataset_stats": ["hlbd.json"]},
                     "dataset_stats must be an object, found a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_REPORTS))
def test_a_bad_report_is_refused_naming_the_problem_and_the_store_is_unchanged(
        trained, tmp_path, case):
    content, message = BAD_REPORTS[case]
    path = tmp_path / case / "experiment_report.json"
    path.parent.mkdir()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write(path, content)
    before = db_snapshot(trained["db"])
    result = cli("import", path, "--db", trained["db"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {path}: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert db_snapshot(trained["db"]) == before


def test_one_bad_report_in_a_folder_refuses_the_whole_import(trained, tmp_path):
    write(tmp_path / "old" / "a" / "experiment_report.json", old_report(trained["report"]))
    write(tmp_path / "old" / "b" / "experiment_report.json",
          old_report(trained["report"], grad_norms=[1.0]))
    before = db_snapshot(trained["db"])
    result = cli("import", tmp_path / "old", "--db", trained["db"])
    assert result.exit_code == 1 and "b/experiment_report.json: grad_norms has 1" in result.output
    assert db_snapshot(trained["db"]) == before


def test_a_folder_without_reports_is_refused(trained, tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("import", tmp_path / "empty", "--db", trained["db"])
    assert result.exit_code == 1 and "no experiment_report.json under" in result.output


def test_export_leaves_superseded_epochs_out_and_csv_matches_the_view(store, tmp_path,
                                                                     db_url):
    outcome = start_run(tiny_config(epochs=3, save_interval=1), store,
                        runs_root=tmp_path / "runs", progress=False)
    resume_checkpoint(store, outcome.run_dir / "checkpoint_epoch_1.pt", epochs=3,
                      progress=False)
    db = db_url
    effective = db_rows(db, "SELECT epoch, loss, grad_norm, lr FROM epoch_metrics "
                         "WHERE run_id = :r ORDER BY epoch", r=outcome.run_id)
    assert db_rows(db, "SELECT count(*) FROM epochs WHERE superseded_by IS NOT NULL") == [
        (2,)]

    as_json = json.loads(cli("export", outcome.run_id[:8], "--db", db).stdout)
    assert as_json["control_losses"] == [r[1] for r in effective]
    assert as_json["grad_norms"] == [r[2] for r in effective]
    assert as_json["learning_rates"] == [r[3] for r in effective]
    steps = db_rows(db, "SELECT loss FROM step_metrics WHERE run_id = :r ORDER BY step",
                 r=outcome.run_id)
    assert as_json["batch_losses"] == [r[0] for r in steps]
    # The report the resumed run wrote itself says the same.
    report = json.loads((outcome.run_dir / "experiment_report.json").read_text())
    for key in LISTS:
        assert as_json[key] == report[key], key

    as_csv = cli("export", outcome.run_id, "--format", "csv", "--db", db).stdout.splitlines()
    header = as_csv[0].split(",")
    assert header[:4] == ["epoch", "segment", "loss", "grad_norm"]
    rows = [dict(zip(header, line.split(","))) for line in as_csv[1:]]
    assert [(int(r["epoch"]), float(r["loss"]), float(r["grad_norm"]), float(r["lr"]))
            for r in rows] == effective
    assert [r["segment"] for r in rows] == ["1", "2", "2"]


def test_export_of_an_unknown_run_is_refused(trained):
    result = cli("export", "nosuchrun", "--db", trained["db"])
    assert result.exit_code == 1 and "no run with id 'nosuchrun'" in result.output


def test_the_store_writes_an_import_in_one_transaction(trained, tmp_path):
    good = importer.read_report(write(tmp_path / "a" / "experiment_report.json",
                                      old_report(trained["report"])))
    clash = importer.read_report(write(tmp_path / "b" / "experiment_report.json",
                                       old_report(trained["report"], model="b")))
    clash.epochs.append(dict(clash.epochs[0]))  # epoch 1 twice: the database says no
    before = db_snapshot(trained["db"])
    with pytest.raises(IntegrityError):
        trained["store"].import_runs([good.as_store_run(), clash.as_store_run()])
    assert db_snapshot(trained["db"]) == before  # the good run did not go in either
