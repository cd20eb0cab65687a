"""Bad flags, files that are not databases, odd --db paths and odd run names: one line,
nothing created or changed, and tables that stay tables."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers.backends import sqlite_only
from helpers.tiny import tiny_config

from hlbd.cli import main
from hlbd.cli.options import display_width
from hlbd.runner import start_run

TINY = ["--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--d-ff", "64",
        "--device", "cpu", "--quiet", "--epochs", "1"]


def cli(*args) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output.strip().splitlines()


# -- every flag checked before a run exists ----------------------------------------------

BAD_FLAGS = [
    (["--n-heads", "0"], "--n-heads must be at least 1"),
    (["--n-heads", "3"], "--d-model (32) must be divisible by --n-heads (3)"),
    (["--lr", "inf"], "--lr must be a positive number, not inf"),
    (["--lr", "nan"], "--lr must be a positive number, not nan"),
    (["--eta-min", "nan"], "--eta-min must be a number >= 0, not nan"),
    (["--max-seq-len", "0"], "--max-seq-len must be at least 1"),
    (["--dropout", "2"], "--dropout must be in [0, 1), not 2.0"),
    (["--weight-decay", "-1"], "--weight-decay must be a number >= 0, not -1.0"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda, cuda:N or mps, not 'tpu'"),
    (["--name", ""], "--name must not be empty"),
    (["--name", "   "], "--name must not be empty"),
    (["--seed", "-1"], "--seed must be between 0 and 4294967295"),
    (["--step-flush-interval", "0"], "--step-flush-interval must be at least 1"),
    (["--device", "cuda"], "--device cuda: CUDA is not available on this machine"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS,
                         ids=[" ".join(f) or "empty" for f, _ in BAD_FLAGS])
def test_a_bad_flag_is_refused_before_anything_exists(tmp_path, flags, message):
    if flags == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    db, runs = tmp_path / "runs.db", tmp_path / "runs"
    code, lines = cli("train", "--db", db, "--runs-dir", runs, *TINY, *flags)
    assert code == 1
    assert lines == [f"Error: {message}"] or (len(lines) == 1 and message in lines[0]), lines
    assert list(tmp_path.iterdir()) == []  # no database, no lock file, no run folder


def test_a_max_seq_len_shorter_than_the_prompts_is_refused_before_the_run(tmp_path, store,
                                                                          db_url):
    code, lines = cli("train", "--db", db_url, "--runs-dir",
                      tmp_path / "runs", *TINY, "--max-seq-len", "4")
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("Error: --max-seq-len 4 leaves no answer token in ")
    assert "use --max-seq-len " in lines[0]
    assert store.list_runs() == [] and not (tmp_path / "runs").exists()


def test_a_resume_with_a_bad_device_writes_nothing(tmp_path, store, db_url):
    run = start_run(tiny_config(epochs=1), store, runs_root=tmp_path / "runs",
                    progress=False)
    before = store.segments(run.run_id)
    code, lines = cli("resume", "--db", db_url, "--run-id", run.run_id,
                      "--epochs", "2", "--device", "tpu")
    assert code == 1 and lines == [
        "Error: --device must be auto, cpu, cuda, cuda:N or mps, not 'tpu'"]
    assert store.segments(run.run_id) == before


# -- files that are not databases -------------------------------------------------------

def _zeros(path: Path) -> None:
    path.write_bytes(bytes(8192))


def _random(path: Path) -> None:
    path.write_bytes(random.Random(10).randbytes(8192))


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("a folder given as --db")


def _json(path: Path) -> None:
    path.write_text('{"control_losses": [1.0, 0.5]}\n')


def _pipe(path: Path) -> None:
    os.mkfifo(path)  # opening it would block forever


def _someone_elses_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.commit()
    conn.close()


NOT_DATABASES = {"zeros": (_zeros, "not a SQLite database"),
                 "random bytes": (_random, "not a SQLite database"),
                 "a folder": (_folder, "is a folder, not a database file"),
                 "a json file": (_json, "not a SQLite database"),
                 "a pipe": (_pipe, "not a regular file"),
                 "another app's sqlite": (_someone_elses_sqlite,
                                          "not an hlbd run database (it has tables invoices")}


def commands(db: Path, tmp: Path) -> dict[str, list]:
    report = tmp / "old" / "experiment_report.json"
    report.parent.mkdir(exist_ok=True)
    report.write_text('{"control_losses": [1.0, 0.5]}')
    return {
        "train": ["train", "--db", db, "--runs-dir", tmp / "runs", *TINY],
        "resume": ["resume", "--db", db, "--run-id", "abc"],
        "train --resume": ["train", "--db", db, "--resume", tmp / "none.pt"],
        "runs": ["runs", "--db", db],
        "show": ["show", "abc", "--db", db],
        "anomalies": ["anomalies", "--db", db],
        "export": ["export", "abc", "--db", db],
        "import": ["import", report, "--db", db],
        "sql": ["sql", "SELECT 1", "--db", db],
        "db current": ["db", "current", "--db", db],
        "db upgrade": ["db", "upgrade", "--db", db],
    }


def _fingerprint(path: Path) -> dict:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


@pytest.mark.parametrize("kind", sorted(NOT_DATABASES))
def test_a_file_that_is_not_a_database_is_refused_by_every_command_and_left_alone(
        tmp_path, kind):
    make, message = NOT_DATABASES[kind]
    db = tmp_path / "data" / "runs.db"
    db.parent.mkdir()
    make(db)
    before, beside = _fingerprint(db), sorted(db.parent.iterdir())
    for name, args in commands(db, tmp_path).items():
        if name == "sql" and kind == "another app's sqlite":
            continue  # read-only SQL over any SQLite file is fine
        code, lines = cli(*args)
        assert code == 1, (name, lines)
        assert len(lines) == 1 and lines[0].startswith("Error: "), (name, lines)
        assert str(db) in lines[0] and message in lines[0], (name, lines)
        assert _fingerprint(db) == before, name
        assert sorted(db.parent.iterdir()) == beside, name  # no -wal, -shm or .lock
    assert not (tmp_path / "runs").exists()


def test_read_commands_create_no_database_where_there_is_none(tmp_path):
    db = tmp_path / "nothing.db"
    for name, args in commands(db, tmp_path).items():
        if name in ("train", "resume", "train --resume", "import", "db upgrade"):
            continue
        code, lines = cli(*args)
        if name == "runs":
            assert code == 0 and lines == [(f"no runs: no database at {db}; `hlbd train` "
                                            "creates it (or pass --db, or set HLBD_DB, "
                                            "to read another)")]
        else:
            assert code == 1 and len(lines) == 1, (name, lines)
            assert f"no database at {db}" in lines[0], (name, lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


# -- odd --db paths ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["we#ird?x=1 .db", "100%20done.db", "with space.db",
                                  "q?mode=ro.db"])
def test_a_db_path_with_url_characters_opens_exactly_that_file(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    code, lines = cli("train", "--db", name, "--runs-dir", "runs", *TINY, "--name", "odd")
    assert code == 0, lines
    made = {p.name for p in tmp_path.iterdir()}
    assert name in made and made <= {"runs", name, f"{name}.lock", f"{name}-wal",
                                     f"{name}-shm"}
    conn = sqlite3.connect(tmp_path / name)
    assert conn.execute("SELECT name, status FROM runs").fetchall() == [("odd", "finished")]
    conn.close()
    monkeypatch.setenv("HLBD_DB", name)  # the same path through the environment
    code, lines = cli("sql", "SELECT name FROM runs", "--csv")
    assert code == 0 and lines == ["name", "odd"]
    code, lines = cli("runs")
    assert code == 0 and "odd" in lines[2]


# -- tables that survive any name -------------------------------------------------------

NAMES = {"newline": "first line\nsecond line", "tab": "a\tb", "long": "x" * 10_000,
         "cjk": "学习曲线", "emoji": "🚀 rocket 👩‍🔬", "escape": "red\x1b[31m!\u202eevil"}


@sqlite_only  # a 10,000-character name: PostgreSQL's VARCHAR(200) refuses it
def test_runs_and_show_keep_one_line_per_row_and_aligned_columns(tmp_path, store):
    # Names from other tools (or a SQL client): the store keeps them as given.
    ids = {key: store.create_run(name, {}, {f"{name[:20]}.json": 3}, status="finished")
           for key, name in NAMES.items()}
    db = tmp_path / "runs.db"

    code, lines = cli("runs", "--db", db)

    assert code == 0
    assert len(lines) == 2 + len(NAMES)  # header, rule, one line per run
    header = lines[0]
    status_at = display_width(header[:header.index("status")])
    for key, run_id in ids.items():
        (line,) = [x for x in lines if x.startswith(run_id)]
        name_cell = line[len(run_id):].strip()
        assert display_width(line[:line.index("finished")]) == status_at, key
        assert "\n" not in line and "\t" not in line and "\x1b" not in line
        assert "\u202e" not in line
        if key == "long":
            assert "x" * 39 + "…" in name_cell and "x" * 41 not in line
    assert "first line\\nsecond line" in "\n".join(lines)
    assert "a\\tb" in "\n".join(lines) and "red\\x1b[31m!\\u202eevil" in "\n".join(lines)
    assert "学习曲线" in "\n".join(lines) and "🚀 rocket 👩‍🔬" in "\n".join(lines)

    for key, run_id in ids.items():
        code, shown = cli("show", run_id, "--db", db)
        assert code == 0, shown
        assert shown[0].startswith(f"run {run_id}  name ") and shown[-1] == "no epochs recorded"
        assert len(shown) == 4, (key, shown)  # facts on three lines, whole names
    code, shown = cli("show", ids["long"], "--db", db)
    assert "x" * 10_000 in shown[0]


def test_an_empty_name_is_refused_for_an_import_too(tmp_path):
    report = tmp_path / "old" / "experiment_report.json"
    report.parent.mkdir()
    report.write_text('{"control_losses": [1.0]}')
    code, lines = cli("import", report, "--name", "", "--db", tmp_path / "runs.db")
    assert code == 1 and lines == [
        "Error: --name must not be empty (leave it out for the default name)"]
