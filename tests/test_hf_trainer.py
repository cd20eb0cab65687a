"""HlbdCallback: a real transformers Trainer (a tiny GPT-2 from its config, on the bundled
HLBD facts) records into a real store, and every recorded value is the Trainer's own."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import hf
from helpers.torchrun import run_script

from hlbd.cli import main
from hlbd.integrations.transformers import RUN_FILE, HlbdCallback
from hlbd.store import Store


def read(db_url: str, run_id: str, *, superseded: bool = False):
    store = Store.open_read_only(db_url)
    try:
        return (store.get_run(run_id), store.steps(run_id, include_superseded=superseded),
                store.epochs(run_id), store.points(run_id), store.segments(run_id))
    finally:
        store.close()


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_each_step_is_the_trainers_own_loss_norm_and_lr_however_often_it_logs(db_url,
                                                                            tmp_path):
    # The Trainer's own numbers, logging every step, with no hlbd in it.
    seen = hf.Seen()
    hf.trainer(tmp_path / "plain", [seen]).train()
    # Recorded, while the user asked the Trainer to log every 50 steps.
    callback, seen_too = HlbdCallback("tiny-gpt2", db=db_url, runs_dir=str(tmp_path)), hf.Seen()
    hf.trainer(tmp_path / "hlbd", [callback, seen_too], logging_steps=50).train()
    run, steps, epochs, points, _ = read(db_url, callback.run.id)

    assert run["status"] == "finished" and run["name"] == "tiny-gpt2"
    assert run["extra"]["integration"] == "transformers.Trainer"
    assert run["config"]["max_grad_norm"] == 0.5 and run["config"]["logging_steps"] == 50
    assert len(steps) == len(seen.logs) == 6  # 48 facts, 8 x 2 per step, 2 epochs
    for row in steps:
        theirs = seen.logs[row["step"]]
        assert row["loss"] == theirs["loss"]
        assert row["grad_norm"] == theirs["grad_norm"]  # before clipping (to 0.5)
        assert row["lr"] == seen_too.lrs[row["step"] - 1][0] == theirs["learning_rate"]
    by_key = {}
    for p in points:
        by_key.setdefault((p["key"], p["scope"]), {})[p["step"]] = p["value"]
    assert by_key["lr/1", "step"] == {n + 1: lrs[1] for n, lrs in enumerate(seen_too.lrs)}
    assert len(set(by_key["lr/1", "step"].values())) > 1  # the schedule moved it per step
    assert by_key["clipped", "step"] == {
        s["step"]: float(s["grad_norm"] > 0.5) for s in steps}
    # The epoch evaluations are the epochs' values; the rows close where the Trainer's
    # epochs did.
    assert by_key["eval/loss", "epoch"] == {3: seen_too.evals[0]["eval_loss"],
                                            6: seen_too.evals[1]["eval_loss"]}
    assert [(e["epoch"], e["steps"]) for e in epochs] == [(1, 3), (2, 3)]
    assert epochs[0]["loss"] == pytest.approx(sum(s["loss"] for s in steps[:3]) / 3)


def test_a_nan_loss_is_recorded_as_nan_not_filtered(db_url, tmp_path):
    callback = HlbdCallback(db=db_url, runs_dir=str(tmp_path))
    seen = hf.Seen()
    # The 4th micro-batch is step 2's second: its loss, and the step's, are NaN.
    hf.trainer(tmp_path / "out", [callback, seen], epochs=1, nan_calls={4}).train()
    _, steps, epochs, _, _ = read(db_url, callback.run.id)
    losses = [s["loss"] for s in steps]
    assert math.isfinite(losses[0]) and math.isnan(losses[1])
    # The Trainer's own log says NaN too (its filter, on by default, would have put the
    # mean of the earlier steps there); NaN gradients then made every later step NaN.
    assert all(same(s["loss"], seen.logs[s["step"]]["loss"]) for s in steps)
    assert all(same(s["grad_norm"], seen.logs[s["step"]]["grad_norm"]) for s in steps)
    assert math.isnan(steps[1]["grad_norm"])
    assert epochs[0]["nonfinite_steps"] == len(steps) - 1


def test_resume_from_a_trainer_checkpoint_continues_the_same_run(db_url, tmp_path):
    every = {"save_strategy": "steps", "save_steps": 2, "eval_strategy": "no"}
    whole = HlbdCallback(db=db_url, runs_dir=str(tmp_path))
    hf.trainer(tmp_path / "whole", [whole], **every).train()
    # A run that reached step 6, resumed from its step-4 checkpoint (mid-epoch 2).
    cut = HlbdCallback(db=db_url, runs_dir=str(tmp_path))
    hf.trainer(tmp_path / "cut", [cut], **every).train()
    folder = tmp_path / "cut" / "checkpoint-4"
    assert json.loads((folder / RUN_FILE).read_text())["run_id"] == cut.run.id
    # Resumed from a copy elsewhere, into another output_dir, without hlbd_run.json: the
    # callback's state inside the checkpoint's trainer_state.json names the run and step.
    moved = tmp_path / "moved" / "step-4"
    shutil.copytree(folder, moved)
    (moved / RUN_FILE).unlink()
    again = HlbdCallback(db=db_url, runs_dir=str(tmp_path))
    hf.trainer(tmp_path / "again", [again], **every).train(resume_from_checkpoint=str(moved))

    assert again.run.id == cut.run.id and again.run.segment == 2
    assert again.run.resumed_from.step == 4 and again.run.resumed_from.epoch == 1
    _, steps, epochs, _, segments = read(db_url, cut.run.id)
    _, whole_steps, whole_epochs, _, _ = read(db_url, whole.run.id)
    assert [(s["step"], s["segment"]) for s in steps] == [
        (1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2)]
    for mine, theirs in zip(steps, whole_steps, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)
        assert mine["lr"] == pytest.approx(theirs["lr"], rel=1e-12)
    assert [(e["epoch"], e["steps"]) for e in epochs] == [(1, 3), (2, 3)]
    assert epochs[1]["loss"] == pytest.approx(whole_epochs[1]["loss"], rel=1e-5)
    assert segments[1]["start_step"] == 4
    _, everything, _, _, _ = read(db_url, cut.run.id, superseded=True)
    assert [(s["step"], s["segment"]) for s in everything if s["superseded_by"]] == [
        (5, 1), (6, 1)]
    # hlbd show says a checkpoint folder that is there is on disk, and one gone missing.
    shutil.rmtree(tmp_path / "cut" / "checkpoint-2")
    shown = CliRunner().invoke(main, ["show", cut.run.id, "--db", db_url]).output
    states = {line.split()[-1]: line for line in shown.splitlines() if "checkpoint-" in line}
    assert "on disk" in states[str(folder)] and "missing" in states[
        str(tmp_path / "cut" / "checkpoint-2")]


FAILS = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    from helpers import hf
    from hlbd.integrations.transformers import HlbdCallback

    class Boom(hf.Seen):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("diverged at step 2")

    callback = HlbdCallback(db=sys.argv[1])
    print(callback.name, flush=True)
    trainer = hf.trainer(sys.argv[2], [callback, Boom()])
    try:
        trainer.train()
    finally:
        print(callback.run.id, flush=True)
""")


def test_an_exception_out_of_train_ends_the_run_failed_with_its_text(db_url, tmp_path,
                                                                   procs):
    tests = str(Path(__file__).parent)
    proc = procs.python(FAILS, db_url, str(tmp_path / "out"), tests, cwd=str(tmp_path))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "RuntimeError: diverged at step 2" in err
    run, steps, *_ = read(db_url, out.split()[-1])
    assert run["status"] == "failed"
    assert run["error"] == "RuntimeError: diverged at step 2"
    assert [s["step"] for s in steps] == [1, 2]  # recorded before it failed


DDP = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[3])
    from helpers import hf
    from hlbd.integrations.transformers import HlbdCallback

    callback, seen = HlbdCallback("ddp", db=sys.argv[1], runs_dir=sys.argv[2]), hf.Seen()
    trainer = hf.trainer(os.path.join(sys.argv[2], "out"), [callback, seen],
                         save_strategy="steps", save_steps=2, logging_steps=50)
    trainer.train()
    with open(os.path.join(sys.argv[2], f"rank{trainer.args.process_index}.json"), "w") as out:
        json.dump({"run_id": callback.run.id, "world_size": trainer.args.world_size,
                   "logs": seen.logs, "lrs": seen.lrs, "evals": seen.evals}, out)
""")


def test_under_torchrun_two_processes_are_one_run_recorded_by_rank_0(db_url, tmp_path):
    output, ranks = run_script(DDP, tmp_path, db_url, str(tmp_path),
                               str(Path(__file__).parent))
    assert "hlbd:" not in output  # no warning from either rank
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["run_id"] == ranks[1]["run_id"]  # rank 1 knows the run it is part of
    store = Store.open_read_only(db_url)
    try:
        runs = store.list_runs()
        checkpoints = store.checkpoints(ranks[0]["run_id"])
    finally:
        store.close()
    assert [(r["run_id"], r["status"]) for r in runs] == [(ranks[0]["run_id"], "finished")]
    run, steps, epochs, points, segments = read(db_url, ranks[0]["run_id"])
    assert len(segments) == 1 and run["config"]["logging_steps"] == 50
    # 48 facts, 24 a rank: 3 micro-batches of 8 an epoch, 2 a step: 2 steps an epoch.
    zero, one = ({int(step): logs for step, logs in r["logs"].items()} for r in ranks)
    assert [s["step"] for s in steps] == sorted(zero) == sorted(one) == [1, 2, 3, 4]
    for row in steps:
        mine, theirs = zero[row["step"]], one[row["step"]]
        # The Trainer logs the loss averaged over the ranks (its nested_gather), and the
        # norm its clipping measured on the gradients DDP had already all-reduced: both
        # are the same on every rank, and recorded once.
        assert row["loss"] == mine["loss"] == theirs["loss"]
        assert row["grad_norm"] == mine["grad_norm"] == theirs["grad_norm"]
        assert row["lr"] == ranks[0]["lrs"][row["step"] - 1][0] == mine["learning_rate"]
    assert [p["value"] for p in points if p["key"] == "lr/1"] == [
        lrs[1] for lrs in ranks[0]["lrs"]]
    assert [(e["epoch"], e["steps"]) for e in epochs] == [(1, 2), (2, 2)]
    assert [p["value"] for p in points if p["key"] == "eval/loss"] == [
        e["eval_loss"] for e in ranks[0]["evals"]]
    # Each checkpoint the Trainer saved, recorded once, by rank 0.
    assert [(c["step"], Path(c["path"]).name) for c in checkpoints] == [
        (2, "checkpoint-2"), (4, "checkpoint-4")]


def test_importing_hlbd_imports_no_framework():
    code = ("import sys, hlbd, hlbd.integrations; "
            "print(sorted(m for m in ('transformers', 'lightning', 'pytorch_lightning') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"
