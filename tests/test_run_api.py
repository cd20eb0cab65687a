"""hlbd.init() and hlbd.Run on a loop of the test's own: every recorded value is the one
the loop itself computed (per step, per parameter group, per name), on SQLite and on
PostgreSQL; bad input raises and records nothing; the run's status says how it ended."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from typing import ClassVar

import pytest
import torch

import hlbd
from hlbd.errors import HlbdError
from hlbd.store import Store


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                 {"params": model[2].parameters(), "lr": 0.02}])
    return model, optimizer


def train(run, epochs=3, batches=4, max_norm=0.5, seed=0):
    """A plain loop: two parameter groups, clipping, a per-epoch scheduler. Returns what
    it saw per step: (run.step, loss, the norm clip_grad_norm_ returned, each group's
    LR as the step used it) and per epoch the validation value it passed."""
    model, optimizer = tiny_model(seed)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    run.watch(optimizer, scheduler)
    generator = torch.Generator().manual_seed(seed)
    seen, vals = [], []
    for epoch in range(epochs):
        for _ in range(batches):
            x = torch.randn(8, 4, generator=generator)
            loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
            optimizer.zero_grad()
            loss.backward()
            lrs = [group["lr"] for group in optimizer.param_groups]
            norm = run.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            run.log({"loss": loss.detach(), "val/acc": 0.25 * epoch, "n": 3})
            seen.append((run.step, loss.item(), norm.item(), lrs))
        scheduler.step()
        vals.append(1.0 / (epoch + 1))
        run.end_epoch({"val_loss": torch.tensor(vals[-1])})
    return seen, vals


def points(db, run_id, key):
    store = Store.open_read_only(db)
    try:
        return [(p["step"], p["epoch"], p["value"]) for p in store.points(run_id, key)]
    finally:
        store.close()


def test_every_step_group_and_name_is_what_the_loop_computed(db_url, tmp_path):
    with hlbd.init(name="own", config={"lr": 0.1, "groups": 2}, db=db_url,
                   runs_dir=str(tmp_path / "runs")) as run:
        seen, vals = train(run, max_norm=0.5)
        run_id = run.id
    assert run.step == 12 and run.epoch == 3
    store = Store.open_read_only(db_url)
    try:
        steps = store.steps(run_id)
        epochs = store.epochs(run_id)
        record = store.get_run(run_id)
    finally:
        store.close()
    assert record["status"] == "finished" and record["config"] == {"lr": 0.1, "groups": 2}
    assert [(s["step"], s["loss"], s["grad_norm"], s["lr"]) for s in steps] == [
        (step, loss, norm, lrs[0]) for step, loss, norm, lrs in seen]
    assert [s["epoch"] for s in steps] == [1] * 4 + [2] * 4 + [3] * 4
    assert points(db_url, run_id, "lr/1") == [
        (step, (step - 1) // 4 + 1, lrs[1]) for step, _, _, lrs in seen]
    assert points(db_url, run_id, "clipped") == [
        (step, (step - 1) // 4 + 1, float(norm > 0.5)) for step, _, norm, _ in seen]
    assert [v for _, _, v in points(db_url, run_id, "val/acc")] == [0.0] * 4 + [0.25] * 4 + [
        0.5] * 4
    # Epoch values carry their epoch and the step the epoch closed on.
    assert points(db_url, run_id, "val_loss") == [
        (4, 1, pytest.approx(vals[0])), (8, 2, pytest.approx(vals[1])),
        (12, 3, pytest.approx(vals[2]))]
    for e, row in enumerate(epochs):
        mine = seen[4 * e:4 * e + 4]
        assert row["loss"] == pytest.approx(sum(s[1] for s in mine) / 4, rel=1e-12)
        assert row["grad_norm_max"] == max(s[2] for s in mine)
        assert row["grad_norm_min"] == min(s[2] for s in mine)
        assert row["clipped_steps"] == sum(s[2] > 0.5 for s in mine)
        assert row["steps"] == 4 and row["skipped_steps"] == 0 and row["wall_seconds"] > 0
        assert row["lr"] == mine[-1][3][0]


def test_metric_points_has_every_name_of_the_effective_history(db_url, tmp_path):
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        train(run, epochs=1, batches=3)
    store = Store.open_read_only(db_url)
    try:
        from sqlalchemy import text
        with store.engine.connect() as conn:
            keys = dict(conn.execute(text(
                "SELECT key, count(*) FROM metric_points WHERE run_id = :r GROUP BY key"),
                {"r": run.id}).all())
    finally:
        store.close()
    assert keys == {"loss": 3, "grad_norm": 3, "lr": 3, "lr/1": 3, "clipped": 3,
                    "val/acc": 3, "n": 3, "val_loss": 1}


def test_nan_and_inf_are_stored_as_measured(db_url, tmp_path):
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        run.log({"loss": torch.tensor(float("nan")), "acc": float("inf")})
        run.log({"loss": 1.5, "acc": torch.tensor(-float("inf"))})
        run.end_epoch()
    store = Store.open_read_only(db_url)
    try:
        losses = [s["loss"] for s in store.steps(run.id)]
        (epoch,) = store.epochs(run.id)
    finally:
        store.close()
    assert math.isnan(losses[0]) and losses[1] == 1.5
    assert [v for _, _, v in points(db_url, run.id, "acc")] == [math.inf, -math.inf]
    assert epoch["steps"] == 2


@pytest.mark.parametrize("metrics, named", [
    ({"loss": "0.5"}, "'loss'"),
    ({"acc": torch.ones(2)}, "'acc'"),
    ({"ok": 1.0, "flag": True}, "'flag'"),
    ({"": 1.0}, "name"),
    ({"epoch": 1.0}, "'epoch'"),
])
def test_a_bad_value_is_a_value_error_naming_it_and_nothing_of_the_call_is_kept(
        db_url, tmp_path, metrics, named):
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        run.log({"loss": 1.0})
        with pytest.raises(ValueError, match=named):
            run.log(metrics)
        run.log({"loss": 2.0})
    store = Store.open_read_only(db_url)
    try:
        assert [(s["step"], s["loss"]) for s in store.steps(run.id)] == [(1, 1.0), (2, 2.0)]
        assert store.points(run.id) == []
        assert store.get_run(run.id)["status"] == "finished"
    finally:
        store.close()


def test_a_step_that_goes_back_or_a_value_given_twice_is_refused(db_url, tmp_path):
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        run.log({"loss": 1.0}, step=5)
        with pytest.raises(ValueError, match="'loss' was already recorded at step 5"):
            run.log({"loss": 2.0}, step=5)
        run.end_epoch()
        with pytest.raises(ValueError, match="step 3"):
            run.log({"loss": 2.0}, step=3)
        run.log({"loss": 3.0}, step=6)
    store = Store.open_read_only(db_url)
    try:
        assert [(s["step"], s["loss"]) for s in store.steps(run.id)] == [(5, 1.0), (6, 3.0)]
    finally:
        store.close()


def test_the_habits_of_other_trackers_are_told_what_to_do_instead(db_url, tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        run.watch(optimizer)
        loss = model(torch.ones(1, 2)).sum()
        # wandb users log before the step, or from step 0
        with pytest.raises(ValueError, match=r"log after optimizer.step\(\)"):
            run.log({"loss": loss.detach()})
        with pytest.raises(ValueError, match=r"log after optimizer.step\(\)"):
            run.log({"loss": loss.detach()}, step=0)
        loss.backward()
        norm = run.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        # ... and log the LR and the norm themselves
        for key in ("lr", "grad_norm"):
            with pytest.raises(ValueError, match=f"'{key}' is recorded by hlbd itself"):
                run.log({key: 0.1})
        run.log({"loss": loss.detach()})
        run.end_epoch()
    store = Store.open_read_only(db_url)
    try:
        [row] = store.steps(run.id)
    finally:
        store.close()
    assert (row["step"], row["lr"], row["grad_norm"]) == (1, 0.1, pytest.approx(norm.item()))


def test_an_exception_in_the_block_fails_the_run_with_its_text_and_is_raised(db_url,
                                                                             tmp_path):
    with pytest.raises(RuntimeError, match="diverged"), \
            hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        run.log({"loss": 1.0})
        raise RuntimeError("diverged at step 1")
    store = Store.open_read_only(db_url)
    try:
        record = store.get_run(run.id)
        assert record["status"] == "failed"
        assert record["error"] == "RuntimeError: diverged at step 1"
        assert [s["loss"] for s in store.steps(run.id)] == [1.0]  # kept, written first
    finally:
        store.close()


def test_ctrl_c_is_interrupted_and_finish_is_idempotent(db_url, tmp_path):
    with pytest.raises(KeyboardInterrupt), hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        raise KeyboardInterrupt
    run.finish()  # already ended: nothing changes
    store = Store.open_read_only(db_url)
    try:
        assert store.get_run(run.id)["status"] == "interrupted"
    finally:
        store.close()


def test_resume_modes(db_url, tmp_path):
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as first:
        first.log({"loss": 1.0})
    with pytest.raises(HlbdError, match="already exists"):
        hlbd.init(db=db_url, run_id=first.id)
    with pytest.raises(HlbdError, match="nothing to resume"):
        hlbd.init(db=db_url, run_id="0" * 32, resume="must")
    with pytest.raises(ValueError, match="resume must be"):
        hlbd.init(db=db_url, resume="yes")
    with hlbd.init(db=db_url, run_id="1" * 32, resume="allow") as new:
        assert new.id == "1" * 32 and new.resumed_from is None
    with hlbd.init(db=db_url, run_id=first.id, resume="allow") as again:
        assert again.id == first.id and again.segment == 2
        assert again.resumed_from is None  # no checkpoint recorded: from the start


def epoch_rows(db_url: str, run_id: str) -> list[dict]:
    store = Store.open_read_only(db_url)
    try:
        return [{k: e[k] for k in ("epoch", "loss", "grad_norm", "grad_norm_max", "steps",
                                   "clipped_steps", "skipped_steps", "lr")}
                for e in store.epochs(run_id)]
    finally:
        store.close()


def test_a_checkpoint_mid_epoch_resumes_there_and_the_epoch_row_is_the_whole_epoch(
        db_url, tmp_path):
    """Four steps an epoch; a checkpoint after step 6 (two steps into epoch 2); steps 7
    and 8 recorded, then the process fails. The resumed run continues at step 6: its
    epoch 2 row is that of steps 5-8 as an uninterrupted run has it."""
    def step(run, model, opt, n):
        loss = (model.weight * n).sum() ** 2
        opt.zero_grad()
        loss.backward()
        run.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        run.log({"loss": loss.detach(), "acc": float(n)})

    def play(run, model, opt, steps, checkpoint_at=None):
        run.watch(opt)
        for n in steps:
            step(run, model, opt, n)
            if run.step % 4 == 0:
                run.end_epoch({"val": float(run.epoch)})
            if run.step == checkpoint_at:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()},
                           tmp_path / "mid.pt")
                run.checkpoint(tmp_path / "mid.pt")

    def parts():
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as whole:
        play(whole, *parts(), range(1, 9))
    with pytest.raises(RuntimeError), hlbd.init(db=db_url, runs_dir=str(tmp_path)) as cut:
        play(cut, *parts(), range(1, 9), checkpoint_at=6)
        raise RuntimeError("killed after step 8")
    with hlbd.init(db=db_url, run_id=cut.id, resume="must") as resumed:
        assert resumed.resumed_from == hlbd.ResumedFrom(str((tmp_path / "mid.pt").resolve()),
                                                        1, 6)
        model, opt = parts()
        state = torch.load(resumed.resumed_from.path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        play(resumed, model, opt, range(7, 9))
    assert epoch_rows(db_url, cut.id) == epoch_rows(db_url, whole.id)
    store = Store.open_read_only(db_url)
    try:
        def steps(run_id):
            return [(s["step"], s["epoch"], s["loss"], s["grad_norm"], s["lr"])
                    for s in store.steps(run_id)]
        assert steps(cut.id) == steps(whole.id) and len(steps(cut.id)) == 8
        for key, scope in [("acc", "step"), ("clipped", "step"), ("val", "epoch")]:
            assert store.series(cut.id, key, scope) == store.series(whole.id, key, scope)
            assert len(store.series(cut.id, key, scope)) == (2 if scope == "epoch" else 8)
        everything = store.steps(cut.id, include_superseded=True)
        assert [(s["step"], s["segment"], s["superseded_by"]) for s in everything] == [
            *[(n, 1, None) for n in range(1, 7)], (7, 1, 2), (7, 2, None), (8, 1, 2),
            (8, 2, None)]
        # An epoch closed after the checkpoint, and its value, are superseded too.
        assert [(e["epoch"], e["segment"], e["superseded_by"])
                for e in store.epochs(cut.id, include_superseded=True)] == [
            (1, 1, None), (2, 1, 2), (2, 2, None)]
    finally:
        store.close()


def test_a_checkpoint_is_recorded_after_its_epoch_and_offered_on_resume(db_url, tmp_path):
    path = tmp_path / "state.pt"
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        train(run, epochs=2, batches=3)
        torch.save({"epoch": 2}, path)
        run.checkpoint(path)
        run.log({"loss": 9.0}, step=7)  # epoch 3 begins, then the process ends
    with hlbd.init(db=db_url, run_id=run.id, resume="must") as resumed:
        assert resumed.resumed_from == hlbd.ResumedFrom(str(path.resolve()), 2, 6)
        assert (resumed.step, resumed.epoch) == (6, 2)
        resumed.log({"loss": 7.0}, step=7)
        resumed.end_epoch()
    store = Store.open_read_only(db_url)
    try:
        steps = store.steps(run.id)
        everything = store.steps(run.id, include_superseded=True)
    finally:
        store.close()
    assert [(s["step"], s["segment"]) for s in steps] == [(n, 1) for n in range(1, 7)] + [
        (7, 2)]
    assert [s["loss"] for s in steps][-1] == 7.0
    assert [(s["step"], s["superseded_by"]) for s in everything if s["loss"] == 9.0] == [
        (7, 2)]  # the segment-1 step after the checkpoint: kept, superseded once


def test_end_epoch_takes_the_columns_only_the_loop_knows(db_url, tmp_path):
    """An epoch's loss as the loop weighs it, its tokens, token accuracy and training
    time go into the epoch row's own columns (tokens/s from them); without them the row
    has the mean of the steps' losses and the time since the last end_epoch."""
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        run.log({"loss": 1.0})
        run.log({"loss": 3.0})
        run.end_epoch(loss=torch.tensor(2.5, dtype=torch.float64), tokens=400,
                      token_accuracy=0.25, wall_seconds=2.0)
        run.log({"loss": 5.0})
        run.end_epoch()
    store = Store.open_read_only(db_url)
    try:
        first, second = store.epochs(run.id)
    finally:
        store.close()
    assert (first["loss"], first["tokens"], first["token_accuracy"],
            first["wall_seconds"], first["tokens_per_second"]) == (2.5, 400, 0.25, 2.0, 200.0)
    assert second["loss"] == 5.0 and second["tokens"] is None
    assert second["token_accuracy"] is None and second["tokens_per_second"] is None
    assert 0 < second["wall_seconds"] < 60
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run, \
            pytest.raises(ValueError, match="'token_accuracy'"):
        run.end_epoch(token_accuracy="high")


def test_a_checkpoint_of_an_earlier_epoch_end_is_recorded_at_its_step(db_url, tmp_path):
    """A loop that saves a state it kept from an epoch's end (after a stop mid-epoch)
    records it at that epoch and step; any other earlier step is refused."""
    path = tmp_path / "kept.pt"
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        train(run, epochs=1, batches=3)
        run.log({"loss": 1.0}, step=4)  # a step of epoch 2, then a stop
        torch.save({"epoch": 1}, path)
        with pytest.raises(ValueError, match="step 2"):
            run.checkpoint(path, step=2)
        run.checkpoint(path, step=3)
    store = Store.open_read_only(db_url)
    try:
        (checkpoint,) = store.checkpoints(run.id)
    finally:
        store.close()
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 3)
    with hlbd.init(db=db_url, run_id=run.id, resume="must") as resumed:
        assert resumed.resumed_from == hlbd.ResumedFrom(str(path.resolve()), 1, 3)


def test_the_report_has_each_step_once_when_steps_flush_mid_epoch(db_url, tmp_path,
                                                                 monkeypatch):
    """Steps flushed before the segment's first epoch closes are in the report's
    batch_losses once (the report's history is read before the segment writes)."""
    monkeypatch.setattr(hlbd.run, "FLUSH_STEPS", 2)
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        train(run, epochs=2, batches=5)
    store = Store.open_read_only(db_url)
    try:
        losses = [s["loss"] for s in store.steps(run.id)]
        epochs = [e["loss"] for e in store.epochs(run.id)]
    finally:
        store.close()
    report = json.loads((run.dir / "experiment_report.json").read_text())
    assert len(losses) == 10
    assert report["batch_losses"] == losses and report["control_losses"] == epochs


def test_a_slow_loop_keeps_its_heartbeat_between_flushes(db_url, tmp_path, monkeypatch):
    """The heartbeat is refreshed after an optimizer step once it is due, not only when
    steps are flushed (every 500): a loop of slow steps is not taken for stale."""
    from hlbd import recorder

    monkeypatch.setattr(recorder, "HEARTBEAT_SECONDS", 0.0)
    model, optimizer = tiny_model()
    beats = []
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        run.watch(optimizer)
        for _ in range(3):
            model(torch.ones(1, 4)).sum().backward()
            optimizer.step()
            run._recorder._writer.drain()
            store = Store.open_read_only(db_url)
            try:
                beats.append(store.get_run(run.id)["heartbeat_at"])
                assert store.steps(run.id) == []  # nothing flushed yet
            finally:
                store.close()
            time.sleep(0.01)
    assert beats == sorted(beats) and len(set(beats)) == 3


class Watched(torch.Tensor):
    """A tensor that notes which thread read its value to the host."""

    reads: ClassVar[list[tuple[str, int]]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("item", "tolist", "__float__", "__bool__", "numpy", "__int__"):
            cls.reads.append((name, threading.get_ident()))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_log_never_reads_a_tensor_on_the_calling_thread(db_url, tmp_path):
    Watched.reads = []
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        for i in range(3):
            run.log({"loss": torch.tensor(float(i)).as_subclass(Watched),
                     "acc": torch.tensor(0.5).as_subclass(Watched)})
        caller = threading.get_ident()
        assert [r for r in Watched.reads if r[1] == caller] == []
        run.end_epoch({"val": torch.tensor(2.0).as_subclass(Watched)})
        assert [r for r in Watched.reads if r[1] == caller] == []
    assert any(thread != caller for _, thread in Watched.reads)  # read, elsewhere
    assert [v for _, _, v in points(db_url, run.id, "acc")] == [0.5] * 3


@pytest.mark.parametrize("skip", [{1}, {1, 3}])  # {1, 3}: the epoch's last one too
def test_a_step_gradscaler_skipped_is_not_a_step(db_url, tmp_path, skip):
    model, optimizer = tiny_model()
    losses = {}  # what the loop logged, by iteration
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        run.watch(optimizer)
        for i in range(4):
            loss = model(torch.ones(2, 4)).sum()
            optimizer.zero_grad()
            scaler.scale(loss * (math.inf if i in skip else 1.0)).backward()
            scaler.unscale_(optimizer)
            run.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            run.log({"loss": loss.detach()})  # after a skipped step too
            losses[i] = loss.item()
        run.end_epoch()
    assert run.step == 4 - len(skip)
    store = Store.open_read_only(db_url)
    try:
        (epoch,) = store.epochs(run.id)
        steps = store.steps(run.id)
    finally:
        store.close()
    assert epoch["steps"] == 4 - len(skip) and epoch["skipped_steps"] == len(skip)
    assert [s["step"] for s in steps] == list(range(1, 5 - len(skip)))
    assert all(math.isfinite(s["grad_norm"]) for s in steps)  # the skipped norm was inf
    assert [s["loss"] for s in steps] == [losses[i] for i in range(4) if i not in skip]
    assert points(db_url, run.id, "skipped") == [(2, 1, 1.0)]
    # The skipped attempts' own values: kept apart (scope 'skipped', at the step each
    # was to be), never as a step's.
    store = Store.open_read_only(db_url)
    try:
        attempts = [(p["key"], p["step"], p["value"]) for p in store.points(run.id)
                    if p["scope"] == "skipped"]
    finally:
        store.close()
    was_to_be = {1: 2, 3: 3}
    assert sorted((k, st) for k, st, _ in attempts) == sorted(
        (k, was_to_be[i]) for i in skip for k in ("grad_norm", "loss"))
    assert all(not math.isfinite(v) for k, _, v in attempts if k == "grad_norm")
    assert sorted(v for k, _, v in attempts if k == "loss") == sorted(
        losses[i] for i in skip)


def test_importing_hlbd_imports_neither_torch_nor_the_store():
    code = ("import sys, hlbd; print(hlbd.__version__); "
            "print(sorted(m for m in ('torch', 'sqlalchemy', 'hlbd.run') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split("\n")
    assert out[1] == "[]"


# A loop that checkpoints every epoch and can kill itself (SIGKILL, as the OOM killer
# would) in the middle of an epoch once some of its steps are in the store.
OWN_LOOP = r'''
import os, signal, sys, time, torch, hlbd, hlbd.run
from hlbd.store import Store
db, folder, run_id, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
hlbd.run.FLUSH_STEPS = 2  # steps reach the store mid-epoch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                       {"params": model[2].parameters(), "lr": 0.02}], momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
gen = torch.Generator().manual_seed(1)
with hlbd.init(db=db, runs_dir=folder, run_id=run_id, resume="allow") as run:
    if run.resumed_from:
        state = torch.load(run.resumed_from.path)
        model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"]); gen.set_state(state["gen"])
    run.watch(opt, sched)
    for epoch in range(run.epoch, 4):
        for _ in range(6):
            x = torch.randn(8, 4, generator=gen)
            loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
            opt.zero_grad(); loss.backward()
            run.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            run.log({"loss": loss.detach(), "half": loss.detach() / 2})
            if run.step == kill_at:
                store = Store.open_read_only(db)
                while not any(s["step"] > kill_at - 3 for s in store.steps(run.id)):
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGKILL)
        sched.step()
        run.end_epoch({"val": float(epoch)})
        path = os.path.join(folder, f"epoch_{run.epoch}.pt")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "gen": gen.get_state()}, path)
        run.checkpoint(path)
'''


def own_loop(procs, db, folder, run_id, kill_at=0):
    proc = procs.python(OWN_LOOP, db, folder, run_id, kill_at)
    try:
        _out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def effective(db, run_id):
    from sqlalchemy import text
    store = Store.open_read_only(db)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT key, scope, step, epoch, value, segment FROM metric_points "
                "WHERE run_id = :r ORDER BY key, scope, step"), {"r": run_id}).all()
            epochs = [tuple(r) for r in conn.execute(text(
                "SELECT epoch, loss, grad_norm, grad_norm_max, steps, clipped_steps, lr "
                "FROM epoch_metrics WHERE run_id = :r ORDER BY epoch"), {"r": run_id})]
        status = store.get_run(run_id)["status"]
    finally:
        store.close()
    return [tuple(r[:5]) for r in rows], {r[5] for r in rows}, epochs, status


def test_killed_mid_epoch_and_resumed_each_step_is_once_and_as_if_never_stopped(
        db_url, tmp_path, procs):
    whole, killed = "a" * 32, "b" * 32
    assert own_loop(procs, db_url, str(tmp_path / "whole"), whole)[0] == 0
    code, err = own_loop(procs, db_url, str(tmp_path / "killed"), killed, kill_at=16)
    assert code == -9, err  # killed in epoch 3 (steps 13-18), after epoch 2's checkpoint
    assert own_loop(procs, db_url, str(tmp_path / "killed"), killed)[0] == 0
    want, _, want_epochs, _ = effective(db_url, whole)
    got, segments, got_epochs, status = effective(db_url, killed)
    assert status == "finished" and segments == {1, 2}
    assert got == want and got_epochs == want_epochs
    assert len([r for r in got if r[0] == "loss"]) == 24
    store = Store.open_read_only(db_url)
    try:
        superseded = [s["step"] for s in store.steps(killed, include_superseded=True)
                      if s["superseded_by"] == 2]
    finally:
        store.close()
    assert superseded and min(superseded) == 13  # epoch 3's first try: kept, superseded


SLOW_LOOP = r'''
import sys, time, hlbd
with hlbd.init(db=sys.argv[1], runs_dir=sys.argv[2]) as run:
    print(run.id, flush=True)
    for i in range(100000):
        run.log({"loss": float(i)})
        if i == 5:
            print("logging", flush=True)
        time.sleep(0.001)
'''


def test_sigterm_ends_the_run_interrupted_with_what_it_logged(db_url, tmp_path, procs):
    proc = procs.python(SLOW_LOOP, db_url, str(tmp_path))
    run_id = proc.stdout.readline().strip()
    assert proc.stdout.readline().strip() == "logging"
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == -15  # it still ends as SIGTERM ends a process
    store = Store.open_read_only(db_url)
    try:
        record = store.get_run(run_id)
        losses = [s["loss"] for s in store.steps(run_id)]
    finally:
        store.close()
    assert (record["status"], record["error"]) == ("interrupted", "SIGTERM")
    assert len(losses) >= 6 and losses == [float(i) for i in range(len(losses))]


def test_the_example_loop_records_what_it_computed_and_resumes(db_url, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "own_loop.py"
    spec = importlib.util.spec_from_file_location("own_loop", path)
    own_loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(own_loop)
    seen = []
    run_id = own_loop.train(db_url, epochs=2, runs_dir=str(tmp_path), seen=seen)
    own_loop.train(db_url, epochs=3, resume=run_id, runs_dir=str(tmp_path), seen=seen)
    store = Store.open_read_only(db_url)
    try:
        steps = store.steps(run_id)
        lr1 = [p["value"] for p in store.points(run_id, "lr/1")]
        epochs = store.epochs(run_id)
        record = store.get_run(run_id)
    finally:
        store.close()
    assert record["status"] == "finished" and len(epochs) == 3
    assert [(s["step"], s["loss"], s["grad_norm"], s["lr"]) for s in steps] == [
        (step, loss, norm, lrs[0]) for step, loss, norm, lrs in seen]
    assert lr1 == [lrs[1] for *_, lrs in seen]
    assert steps[-1]["step"] == len(seen) and len({s["step"] for s in steps}) == len(steps)


def test_anomaly_rules_check_what_a_run_has_and_say_what_they_could_not(db_url, tmp_path):
    from click.testing import CliRunner

    from hlbd.cli import main

    # A config that looks like hlbd train's schedule: an own loop's config says nothing
    # of the scheduler it steps, so the LR is not compared with that schedule.
    config = {"lr": 0.1, "t_0": 10, "t_mult": 2, "eta_min": 0.0}
    with hlbd.init(db=db_url, runs_dir=str(tmp_path), config=config) as run:
        model, optimizer = tiny_model()
        run.watch(optimizer)
        for scale in (1.0, 1e4):  # the second step's gradient explodes
            loss = model(torch.ones(2, 4)).sum() * scale
            optimizer.zero_grad()
            loss.backward()
            run.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        run.end_epoch()
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as bare:
        bare.log({"acc": 0.5})
        bare.end_epoch()
    result = CliRunner().invoke(main, ["anomalies", "--db", db_url])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"{run.id[:12]}: lr_unexplained not checked (the run's config does not " in out
    assert f"{run.id[:12]}: grad_explosion not checked" not in out
    assert "grad_explosion" in [line.split()[3] for line in out.splitlines()
                                if line.startswith(run.id[:12]) and "not checked" not in line]
    assert f"{bare.id[:12]}: grad_explosion not checked (no grad_norm_max or grad_norm " in out
    assert f"{bare.id[:12]}: nonfinite_loss not checked (no loss recorded)" in out


def test_show_lists_the_series_a_loop_logged(db_url, tmp_path):
    from click.testing import CliRunner

    from hlbd.cli import main

    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        train(run, epochs=1, batches=2)
    out = CliRunner().invoke(main, ["show", run.id, "--db", db_url]).output
    rows = [line.split() for line in out.splitlines()]
    assert ["lr/1", "step", "2", "1", "2"] in rows
    assert ["val_loss", "epoch", "1", "2", "2"] in rows


def test_show_says_steps_were_recorded_when_no_epoch_was_closed(db_url, tmp_path):
    from click.testing import CliRunner

    from hlbd.cli import main

    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        for loss in (0.3, 0.2, 0.1):
            run.log({"loss": loss})
    out = CliRunner().invoke(main, ["show", run.id, "--db", db_url]).output
    assert "no epochs recorded, but 3 steps (end_epoch() closes an epoch)" in out


def test_series_reads_one_name_of_the_effective_history(db_url, tmp_path):
    path = tmp_path / "state.pt"
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        run.log({"acc": 0.1})
        run.log({"acc": float("nan")})
        run.end_epoch({"val": 2.0})
        torch.save({}, path)
        run.checkpoint(path)
        run.log({"acc": 0.3})  # after the checkpoint: superseded by the resume
    with hlbd.init(db=db_url, run_id=run.id, resume="must") as again:
        again.log({"acc": 0.4})
    store = Store.open_read_only(db_url)
    try:
        acc = store.series(run.id, "acc")
        val = store.series(run.id, "val", scope="epoch")
    finally:
        store.close()
    assert acc[0] == (1, 0.1) and acc[1][0] == 2 and math.isnan(acc[1][1])
    assert acc[2:] == [(3, 0.4)] and val == [(2, 2.0)]


def test_a_run_of_ones_own_copies_and_exports_with_its_series(db_url, tmp_path):
    """hlbd copy carries every row hlbd.Run wrote (points, a mid-epoch resume's segment
    and what it superseded); hlbd export and hlbd sql read it as any run."""
    from click.testing import CliRunner

    from hlbd.cli import main

    with pytest.raises(RuntimeError), hlbd.init(db=db_url, runs_dir=str(tmp_path)) as run:
        train(run, epochs=1, batches=3)
        torch.save({}, tmp_path / "mid.pt")
        run.checkpoint(tmp_path / "mid.pt")  # at step 3, the epoch still open
        run.log({"acc": 0.5}, step=4)  # these two superseded by the resume
        run.log({"acc": 0.6}, step=5)
        raise RuntimeError("stopped")
    with hlbd.init(db=db_url, run_id=run.id, resume="must") as again:
        again.log({"acc": 0.7}, step=5)
        again.end_epoch({"val_loss": 0.25})
    copy = str(tmp_path / "copy.db")
    cli = CliRunner()
    first = cli.invoke(main, ["copy", db_url, copy])
    assert first.exit_code == 0, first.output
    assert "already copied" in cli.invoke(main, ["copy", db_url, copy]).output

    everything = ("SELECT key, scope, step, epoch, value, segment, superseded_by FROM points "
                  "ORDER BY key, scope, step, segment")
    view = "SELECT key, scope, step, value FROM metric_points ORDER BY key, scope, step"

    def rows(db, sql):
        out = cli.invoke(main, ["sql", "--db", db, "--csv", sql])
        assert out.exit_code == 0, out.output
        return out.output.splitlines()

    assert rows(copy, everything) == rows(db_url, everything)
    assert len(rows(copy, everything)) > 10
    assert rows(copy, view) == rows(db_url, view)
    assert [r for r in rows(copy, view) if r.startswith("acc,")] == ["acc,step,5,0.7"]
    store = Store.open_read_only(copy)
    try:
        assert [s["start_step"] for s in store.segments(run.id)] == [None, 3]
    finally:
        store.close()
    exported = cli.invoke(main, ["export", run.id, "--db", copy])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.output)["run_id"] == run.id


def test_a_database_in_a_folder_that_does_not_exist_is_named_so(tmp_path):
    from hlbd.errors import StoreError

    with pytest.raises(StoreError, match=r"its folder .*nowhere does not exist"):
        hlbd.init(db=str(tmp_path / "nowhere" / "runs.db"))
    assert not (tmp_path / "nowhere").exists()


# A run opened without `with` and never finished, ended by the process as ``how`` says.
LEFT_OPEN = r'''
import sys, torch, hlbd
db, folder, how = sys.argv[1], sys.argv[2], sys.argv[3]
run = hlbd.init(db=db, runs_dir=folder)
print(run.id, flush=True)
run.log({"loss": torch.tensor(0.5)})
run.end_epoch()
if how == "raise":
    raise ValueError("boom")
if how == "ctrl-c":
    raise KeyboardInterrupt
'''


@pytest.mark.parametrize(("how", "status", "error"), [
    ("exit", "finished", None), ("raise", "failed", "ValueError: boom"),
    ("ctrl-c", "interrupted", "KeyboardInterrupt")])
def test_a_run_left_open_ends_with_the_process(procs, db_url, tmp_path, how, status,
                                               error):
    proc = procs.python(LEFT_OPEN, db_url, tmp_path / "runs", how)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert (proc.returncode == 0) == (how == "exit"), err
    if how == "raise":
        assert "ValueError: boom" in err  # the exception is still printed
    store = Store.open_read_only(db_url)
    try:
        run = store.get_run(out.split()[0])
        epochs = store.epochs(run["run_id"])
    finally:
        store.close()
    assert (run["status"], run["error"]) == (status, error)
    assert [e["loss"] for e in epochs] == [0.5]  # what was logged is all there
