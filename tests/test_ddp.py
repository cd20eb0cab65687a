"""Training under torchrun (DDP, gloo on CPU): one run, recorded once by rank 0, with the
numbers of one process; stops, deaths and resumes across world sizes.

Every launch runs under a deadline and ends with its whole process tree killed, so no
test can leave a worker behind or hang.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.backends import rows
from helpers.procs import free_port, wait_until
from helpers.tiny import tiny_config, tiny_flags
from helpers.torchrun import LAUNCH_TIMEOUT, Launched, small_dataset, torchrun_command

from hlbd.checkpoint import load_checkpoint
from hlbd.cli import main
from hlbd.config import TrainConfig
from hlbd.distributed import Ranks
from hlbd.errors import HlbdError
from hlbd.report import REPORT_NAME
from hlbd.runner import resume_run, start_run
from hlbd.store import Store

pytestmark = pytest.mark.slow

RTOL = 1e-5
# Per-epoch numbers that must agree across world sizes (wall time and throughput differ).
MEASURED = ("loss", "grad_norm", "grad_norm_max", "grad_norm_min", "token_accuracy")
COUNTED = ("epoch", "steps", "nonfinite_steps", "clipped_steps", "skipped_steps", "tokens")


# The tiny run's shape in this file (the tiny model's dropout 0: the 1 vs 2 ranks
# equivalence holds at any seed).
SHAPE = {"batch_size": 4, "grad_accum": 3, "epochs": 3, "t_0": 1, "seed": 5,
         "save_interval": 0, "step_flush_interval": 2}


def flags(dataset: Path, **values) -> list[str]:
    """``train`` with the tiny model in SHAPE, plus ``values``, as flags."""
    return ["train", "--datasets", str(dataset), *tiny_flags(SHAPE, **values),
            "--ddp-timeout", "60"]


def config(dataset: Path, **values) -> TrainConfig:
    """The config ``flags`` gives, for the same run in this process."""
    return tiny_config(SHAPE, datasets=[str(dataset)], **values)


def assert_same_numbers(got: list[dict], expected: list[dict], columns=MEASURED) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for c in COUNTED:
            if c in e:
                assert g[c] == e[c], (c, g, e)
        for c in columns:
            assert math.isclose(g[c], e[c], rel_tol=RTOL), (c, g[c], e[c])
        assert math.isclose(g["lr"], e["lr"], rel_tol=1e-12)


def run_ids(db: Path) -> list[str]:
    return [r[0] for r in rows(db, "SELECT run_id FROM runs")]


@pytest.fixture
def dataset(tmp_path) -> Path:
    return small_dataset(tmp_path / "facts.json")


@pytest.fixture
def launch():
    """Start a command as ``Launched``; whatever the test did, its processes end with it."""
    started: list[Launched] = []

    def start(command: list[str], cwd: Path) -> Launched:
        started.append(Launched(command, cwd))
        return started[-1]

    yield start
    for launched in started:
        launched.kill()


# -- the same numbers at any world size --------------------------------------------------

def test_two_ranks_record_the_one_process_run(tmp_path, dataset, launch):
    # Evaluated on a file of its own: every rank evaluates, rank 0 records it once.
    val = json.loads(dataset.read_text())
    val["data"]["arithmetic"] = [{"input": "3 + 4 = ?", "output": "7"},
                                 {"input": "9 - 2 = ?", "output": "7"}]
    (tmp_path / "val.json").write_text(json.dumps(val))
    held = {"val_dataset": str(tmp_path / "val.json")}
    one = Store.open(str(tmp_path / "one.db"))
    single = start_run(config(dataset, **held), one, runs_root=tmp_path / "one",
                       progress=False)
    db = tmp_path / "two.db"

    code, output = launch(torchrun_command(*flags(dataset, **held), "--db", str(db),
                                           "--runs-dir", str(tmp_path / "two")),
                          tmp_path).wait()

    assert code == 0, output
    assert output.count("run_id: ") == 1 and output.count("finished: run") == 1, output
    two = Store.open(str(db))
    [run_id] = run_ids(db)
    assert_same_numbers(two.epochs(run_id), one.epochs(single.run_id))
    steps, expected = two.steps(run_id), one.steps(single.run_id)
    assert [s["step"] for s in steps] == [s["step"] for s in expected]
    for s, e in zip(steps, expected):
        assert math.isclose(s["loss"], e["loss"], rel_tol=RTOL), (s, e)
        assert math.isclose(s["grad_norm"], e["grad_norm"], rel_tol=RTOL), (s, e)
        assert s["lr"] == e["lr"]
    # Recorded once: one row per epoch and step, one folder, one report, one checkpoint.
    assert rows(db, "SELECT count(*), count(DISTINCT epoch) FROM epochs") == [(3, 3)]
    assert rows(db, "SELECT count(*) FROM steps") == [(len(expected),)]
    assert [p.name for p in (tmp_path / "two").iterdir()] == [run_id]
    assert sorted(p.name for p in (tmp_path / "two" / run_id).iterdir()) == [
        "checkpoint_epoch_3.pt", REPORT_NAME]
    assert len(json.loads((tmp_path / "two" / run_id / REPORT_NAME).read_text())[
        "control_losses"]) == 3
    run = two.get_run(run_id)
    assert (run["config"]["world_size"], run["config"]["backend"]) == (2, "gloo")
    assert run["config"]["batch_size"] == 4  # the global micro-batch, as given
    [segment] = two.segments(run_id)
    assert segment["world_size"] == 2 and len(segment["hosts"]) == 2
    assert one.segments(single.run_id)[0]["world_size"] == 1
    # Each rank's process values, gathered by rank 0; the held-out values once.
    series = {s["key"]: s["values"] for s in two.point_series(run_id)}
    assert {k: v for k, v in series.items() if k.startswith("sys/")} == {
        f"sys/rank{r}/{name}": 3 for r in (0, 1) for name in ("rss_bytes", "cpu_seconds")}
    assert series.get("val_loss") == 3
    for key in ("val_loss", "val_token_accuracy", "val/exact"):
        for got, want in zip(two.epoch_values(run_id, key).values(),
                             one.epoch_values(single.run_id, key).values(), strict=True):
            assert math.isclose(got, want, rel_tol=RTOL), key
    # A checkpoint of the DDP run loads in a single process (no DDP prefixes).
    state = load_checkpoint(tmp_path / "two" / run_id / "checkpoint_epoch_3.pt")
    assert not any(k.startswith("module.") for k in state["model"])
    assert len(state["rng_ranks"]) == 2


def test_every_rank_computes_the_same_rows(tmp_path, dataset, launch):
    """The grad norm each rank gets from clip_grad_norm_ on the synchronised gradient,
    and the global loss, are the same on every rank (dropout on: ranks differ in masks)."""
    script = Path(__file__).with_name("ddp_rank_rows.py")
    command = torchrun_command(str(script), str(dataset), str(tmp_path), module=None)

    code, output = launch(command, tmp_path).wait()

    assert code == 0, output
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0["steps"]) == 8 and len(rank0["epochs"]) == 2  # 10 batches / 3, x2
    assert [(s["step"], s["loss"], s["grad_norm"], s["lr"]) for s in rank0["steps"]] == [
        (s["step"], s["loss"], s["grad_norm"], s["lr"]) for s in rank1["steps"]]
    drop = ("run_id", "wall_seconds", "tokens_per_second", "recorded_at")
    assert [{k: v for k, v in e.items() if k not in drop} for e in rank0["epochs"]] == [
        {k: v for k, v in e.items() if k not in drop} for e in rank1["epochs"]]


def test_two_nodes_on_localhost_record_one_run(tmp_path, dataset, launch):
    port = free_port()
    nodes = []
    for node in (0, 1):
        where = tmp_path / f"node{node}"
        where.mkdir()
        rendezvous = ["--nnodes=2", f"--node-rank={node}",
                      f"--rdzv-endpoint=127.0.0.1:{port}"]
        nodes.append(launch(torchrun_command(*flags(dataset, epochs=2), "--db",
                                             str(where / "runs.db"), "--runs-dir",
                                             str(where / "runs"), nproc=1,
                                             rendezvous=rendezvous), where))

    results = [n.wait() for n in nodes]

    for code, output in results:
        assert code == 0, output
    db = tmp_path / "node0" / "runs.db"
    [run_id] = run_ids(db)
    assert rows(db, "SELECT epoch, segment FROM epochs ORDER BY epoch") == [(1, 1), (2, 1)]
    assert rows(db, "SELECT world_size, hosts FROM segments") == [
        (2, json.dumps([Store.open(str(db)).segments(run_id)[0]["hostname"]] * 2))]
    # The second node's rank opened no store and wrote no folder: only launch output.
    assert [p.name for p in (tmp_path / "node1").iterdir()
            if not p.name.startswith("launch-")] == []
    assert "run_id" not in results[1][1]


# -- refusals, deaths and stops ----------------------------------------------------------

def test_a_batch_that_does_not_split_over_the_ranks_is_refused_before_a_run(
        tmp_path, dataset, launch):
    db = tmp_path / "runs.db"

    code, output = launch(torchrun_command(*flags(dataset, batch_size=3), "--db", str(db)),
                          tmp_path).wait()

    assert code != 0
    lines = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert lines == [("Error: --batch-size 3 does not split evenly over the 2 processes "
                      "(WORLD_SIZE): it is the global micro-batch, so pass a multiple of 2")]
    assert run_ids(db) == []


def test_the_batch_check_needs_no_process_group(store):
    before = store.list_runs()

    with pytest.raises(HlbdError, match="--batch-size 5 does not split evenly over the 4"):
        start_run(TrainConfig(batch_size=5), store, ranks=Ranks(rank=0, world_size=4))

    assert store.list_runs() == before


@pytest.mark.parametrize("killed, shown", [(1, "failed"), (0, "crashed")])
def test_a_killed_rank_ends_the_run_and_one_process_resumes_it(tmp_path, dataset, launch,
                                                               killed, shown, caplog):
    db = tmp_path / "runs.db"
    launched = launch(torchrun_command(*flags(dataset, epochs=400, save_interval=2),
                                       "--db", str(db), "--runs-dir", str(tmp_path)),
                      tmp_path)
    wait_until(lambda: rows(db, "SELECT 1 FROM checkpoints WHERE epoch >= 2"), launched,
               timeout=LAUNCH_TIMEOUT, every=0.05)
    ranks = launched.children()
    assert sorted(ranks) == [0, 1]

    os.kill(ranks[killed], signal.SIGKILL)
    code, output = launched.wait()

    assert code != 0
    assert launched.left_behind == []
    store = Store.open(str(db))
    [run_id] = run_ids(db)
    run = store.get_run(run_id)
    assert run["display_status"] == shown, output
    if killed == 1:
        assert "Connection" in run["error"] or "peer" in run["error"], run["error"]
    recorded = len(store.epochs(run_id))
    checkpoint = store.newest_checkpoint(run_id)["epoch"]

    with caplog.at_level("WARNING", logger="hlbd"):
        outcome = resume_run(store, run_id, epochs=recorded + 2, progress=False)

    assert outcome.status == "finished"
    assert "written by 2 process(es); continuing on 1" in caplog.text
    epochs = store.epochs(run_id)
    assert [e["epoch"] for e in epochs] == list(range(1, recorded + 3))
    assert {e["segment"] for e in epochs if e["epoch"] > checkpoint} == {2}
    segments = store.segments(run_id)
    assert [(s["status"], s["world_size"]) for s in segments] == [
        ("crashed" if killed == 0 else "failed", 2), ("finished", 1)]


def test_a_signal_to_torchrun_stops_every_rank_at_a_checkpoint_and_resume_is_exact(
        tmp_path, dataset, launch):
    """Ctrl-C (SIGINT) to the torchrun parent: every rank stops at the same batch, rank 0
    checkpoints the last finished epoch, the run is interrupted; a resume on 2 ranks
    continues exactly, dropout (per-rank random state) included."""
    db = tmp_path / "runs.db"
    shape = {"dropout": 0.2, "epochs": 400}
    stopped = launch(torchrun_command(*flags(dataset, **shape), "--db", str(db),
                                      "--runs-dir", str(tmp_path)), tmp_path)
    wait_until(lambda: rows(db, "SELECT 1 FROM epochs WHERE epoch >= 2"), stopped,
               timeout=LAUNCH_TIMEOUT, every=0.05)
    ranks = stopped.children()

    stopped.proc.send_signal(signal.SIGINT)
    code, output = stopped.wait()

    assert code != 0
    assert stopped.left_behind == [] and len(ranks) == 2
    store = Store.open(str(db))
    [run_id] = run_ids(db)
    run = store.get_run(run_id)
    assert run["status"] == "interrupted", output
    done = len(store.epochs(run_id))
    assert [c["epoch"] for c in store.checkpoints(run_id)] == [done]
    assert output.count("saving a checkpoint of the last finished epoch") == 1  # rank 0, once

    resumed = launch(torchrun_command("resume", "--run-id", run_id, "--epochs",
                                      str(done + 2), "--db", str(db), "--quiet",
                                      "--ddp-timeout", "60"), tmp_path)
    code, output = resumed.wait()
    assert code == 0, output
    straight_db = tmp_path / "straight.db"
    code, output = launch(torchrun_command(*flags(dataset, **{**shape, "epochs": done + 2}),
                                           "--db", str(straight_db), "--runs-dir",
                                           str(tmp_path / "straight")), tmp_path).wait()
    assert code == 0, output

    [straight_id] = run_ids(straight_db)
    expected = Store.open(str(straight_db)).epochs(straight_id)
    exact = ("epoch", "loss", "grad_norm", "grad_norm_max", "grad_norm_min", "lr",
             "token_accuracy", "steps", "tokens")
    assert [[e[c] for c in exact] for e in store.epochs(run_id)] == [
        [e[c] for c in exact] for e in expected]
    assert [s["segment"] for s in store.epochs(run_id)] == [1] * done + [2, 2]


def test_two_ranks_continue_a_one_process_checkpoint(tmp_path, dataset, launch):
    db = tmp_path / "runs.db"
    store = Store.open(str(db))
    split = start_run(config(dataset, epochs=2), store, runs_root=tmp_path / "runs",
                      progress=False)
    straight = start_run(config(dataset, epochs=4), store, runs_root=tmp_path / "runs",
                         progress=False)

    code, output = launch(torchrun_command("resume", "--run-id", split.run_id, "--epochs",
                                           "4", "--db", str(db), "--quiet"),
                          tmp_path).wait()

    assert code == 0, output
    assert "written by 1 process(es); continuing on 2" in output
    assert_same_numbers(store.epochs(split.run_id), store.epochs(straight.run_id))
    assert [(s["world_size"], s["status"]) for s in store.segments(split.run_id)] == [
        (1, "finished"), (2, "finished")]
    assert store.get_run(split.run_id)["config"]["world_size"] == 2


def test_a_torchrun_restart_does_not_start_a_second_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    db = tmp_path / "runs.db"

    result = CliRunner().invoke(main, ["train", "--db", str(db), "--quiet"])

    assert result.exit_code == 1
    assert "torchrun restarted the training processes" in result.output
    assert "hlbd resume --run-id ID" in result.output
    assert not db.exists()
