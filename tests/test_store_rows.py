"""The store's pure rules on their own: NaN flags, step columns, rollups (in Python and in
SQL), liveness, the effective history, bucket widths."""

from __future__ import annotations

import math
import os
import random
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import text

from hlbd.store import history
from hlbd.store.buckets import bucket_width
from hlbd.store.claims import STALE_AFTER, holder_state
from hlbd.store.rows import (
    ROLLUP_COLUMNS,
    ROLLUP_STEPS,
    STEP_COLUMNS,
    STEP_SERIES,
    join_nan,
    rollup_rows,
    rollup_sql,
    split_nan,
    step_columns,
    utcnow,
)


def awkward_steps(first: int, count: int, seed: int = 0) -> list[dict]:
    """Steps whose values are finite, NaN, +-Inf or not recorded, epochs of uneven length."""
    rng = random.Random(seed)
    choices = [lambda: rng.uniform(-3, 3), lambda: math.nan, lambda: math.inf,
               lambda: -math.inf, lambda: None]
    steps, epoch = [], 1
    for step in range(first, first + count):
        if rng.random() < 0.05:
            epoch += 1
        steps.append({"step": step, "epoch": epoch,
                      **{s: rng.choices(choices, weights=[12, 1, 1, 1, 1])[0]()
                         for s in STEP_SERIES}})
    return steps


def test_a_nan_travels_as_a_flag_and_comes_back_a_nan():
    assert split_nan(math.nan) == (None, True)
    assert split_nan(1.5) == (1.5, False) and split_nan(None) == (None, False)
    assert math.isnan(join_nan(*split_nan(math.nan)))
    assert join_nan(None, False) is None and join_nan(2.0, False) == 2.0


def test_step_columns_keep_nan_apart_from_not_recorded():
    steps = [{"step": 1, "epoch": 1, "loss": math.nan, "grad_norm": None, "lr": 0.1},
             {"step": 2, "epoch": 1, "loss": 2.0, "grad_norm": math.inf, "lr": 0.1}]
    columns = step_columns("r", 3, steps)
    assert len(columns) == len(STEP_COLUMNS.split(","))
    by_name = dict(zip([c.strip() for c in STEP_COLUMNS.split(",")], columns))
    assert by_name["loss"] == [None, 2.0] and by_name["loss_is_nan"] == [True, False]
    assert by_name["grad_norm"] == [None, math.inf]
    assert by_name["grad_norm_is_nan"] == [False, False]
    assert by_name["lr_is_nan"] == [False, False] and by_name["segment"] == [3, 3]
    assert step_columns("r", 1, []) is None


def test_rollups_cut_at_each_stretch_and_epoch_and_count_what_is_not_finite():
    steps = [{"step": s, "epoch": 1 if s <= 40 else 2, "loss": float(s), "grad_norm": 1.0,
              "lr": 0.5} for s in range(1, 71)]
    steps[4]["loss"] = math.nan
    steps[5]["grad_norm"] = math.inf
    steps[6]["lr"] = None
    rows = rollup_rows(step_columns("r", 1, steps))
    names = [c.strip() for c in ROLLUP_COLUMNS.split(",")]
    got = [dict(zip(names, row)) for row in rows]
    # Stretches of ROLLUP_STEPS aligned at step 1, and a cut where epoch 2 starts.
    assert [(r["first_step"], r["last_step"], r["epoch"]) for r in got] == [
        (1, ROLLUP_STEPS, 1), (ROLLUP_STEPS + 1, 40, 1), (41, 2 * ROLLUP_STEPS, 2),
        (2 * ROLLUP_STEPS + 1, 70, 2)]
    first = got[0]
    assert first["steps"] == ROLLUP_STEPS
    assert (first["loss_count"], first["loss_nonfinite"]) == (ROLLUP_STEPS - 1, 1)
    assert first["loss_sum"] == sum(range(1, ROLLUP_STEPS + 1)) - 5
    assert (first["loss_min"], first["loss_max"]) == (1.0, float(ROLLUP_STEPS))
    assert (first["grad_norm_count"], first["grad_norm_nonfinite"]) == (ROLLUP_STEPS - 1, 1)
    # A value not recorded is in neither count.
    assert (first["lr_count"], first["lr_nonfinite"]) == (ROLLUP_STEPS - 1, 0)


def test_rollups_are_the_same_whatever_order_the_steps_come_in():
    steps = awkward_steps(5, 300)
    in_order = rollup_rows(step_columns("r", 1, steps))
    shuffled = steps[:]
    random.Random(1).shuffle(shuffled)
    assert _close(rollup_rows(step_columns("r", 1, shuffled)), in_order)


def _close(a: list[tuple], b: list[tuple]) -> bool:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            if isinstance(u, float) or isinstance(v, float):
                assert u == pytest.approx(v, rel=1e-9, abs=1e-9), (x, y)
            else:
                assert u == v, (x, y)
    return True


def test_the_sql_rollup_rule_gives_what_the_python_rule_wrote(store):
    """rollup_sql('steps') grouped by stretch equals the Python rule over the same steps,
    and the step_rollups rows written beside the steps (in two batches, so one stretch is
    cut in two) combine by rollup_sql('step_rollups') to the same: NaN, +-Inf and values
    not recorded included, on each backend."""
    run_id = store.create_run("rollups", {}, {})
    steps = awkward_steps(1, 500, seed=7)
    store.record_steps(run_id, 1, steps[:123])
    store.record_steps(run_id, 1, steps[123:])
    stretch = f"(step - 1) / {ROLLUP_STEPS}"
    from_steps = text(f"""
        SELECT run_id, segment, MIN(step), MAX(step), epoch, COUNT(*), {rollup_sql("steps")}
        FROM steps WHERE run_id = :run GROUP BY run_id, segment, epoch, {stretch}
        ORDER BY MIN(step)""")
    from_rollups = text(f"""
        SELECT run_id, segment, MIN(first_step), MAX(last_step), epoch, SUM(steps),
               {rollup_sql("step_rollups")}
        FROM step_rollups WHERE run_id = :run
        GROUP BY run_id, segment, epoch, {stretch.replace("step", "first_step")}
        ORDER BY MIN(first_step)""")
    with store.engine.connect() as conn:
        sql_rule = [tuple(r) for r in conn.execute(from_steps, {"run": run_id, "inf": math.inf})]
        combined = [tuple(r) for r in conn.execute(from_rollups, {"run": run_id})]
        written = conn.execute(text("SELECT COUNT(*) FROM step_rollups WHERE run_id = :run"),
                               {"run": run_id}).scalar()
    python_rule = rollup_rows(step_columns(run_id, 1, steps))
    assert len(python_rule) > 500 // ROLLUP_STEPS and written == len(python_rule) + 1
    assert _close(sql_rule, python_rule)
    assert _close(combined, python_rule)


def test_a_holder_is_running_crashed_or_stale():
    now = utcnow()
    here = socket.gethostname()
    assert holder_state(os.getpid(), here, now, now) == "running"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    assert holder_state(gone.pid, here, now, now) == "crashed"
    # On another host only the heartbeat can tell.
    assert holder_state(gone.pid, "elsewhere", now, now) == "running"
    old = now - STALE_AFTER - timedelta(seconds=1)
    assert holder_state(os.getpid(), "elsewhere", old, now) == "stale"


def test_a_later_segment_from_an_earlier_epoch_supersedes_what_came_after_it():
    segments = [{"segment": 1, "start_epoch": 0}, {"segment": 2, "start_epoch": 3}]
    assert history.superseded(segments, 1, 5)        # segment 2 restarted after epoch 3
    assert not history.superseded(segments, 1, 3)    # epoch 3 itself is where it started
    assert not history.superseded(segments, 2, 5)


def test_resume_candidates_are_newest_first_and_leave_out_superseded_and_pruned():
    segments = [{"segment": 1, "start_epoch": 0, "resumed_from": None},
                {"segment": 2, "start_epoch": 2, "resumed_from": "/c/e2.pt"}]
    checkpoints = [
        {"segment": 1, "epoch": 2, "path": "/c/e2.pt", "size_bytes": 10, "pruned_at": None},
        {"segment": 1, "epoch": 4, "path": "/c/e4.pt", "size_bytes": 10, "pruned_at": None},
        {"segment": 2, "epoch": 3, "path": "/c/e3.pt", "size_bytes": 10, "pruned_at": None},
        {"segment": 2, "epoch": 1, "path": "/c/e1.pt", "size_bytes": 10,
         "pruned_at": utcnow()}]
    got = history.checkpoint_candidates(segments, checkpoints)
    # e4 of segment 1 is after segment 2's start (superseded); e1 was pruned.
    assert [(c["path"], c["epoch"]) for c in got] == [("/c/e3.pt", 3), ("/c/e2.pt", 2)]


@pytest.mark.parametrize(("last_step", "max_points", "width"), [
    (10, 1000, 1), (1000, 1000, 1), (2000, 1000, 2), (16_000, 1000, ROLLUP_STEPS),
    (100_000, 1000, 4 * ROLLUP_STEPS), (0, 1000, 1)])
def test_bucket_widths_are_single_steps_or_whole_rollups(last_step, max_points, width):
    assert bucket_width(last_step, max_points) == width
