"""The explorer's library reads: downsampled steps keep extremes, never mix in superseded rows."""

from __future__ import annotations

import itertools
import math
import random
import sqlite3

import pytest
from helpers.backends import sqlite_at, sqlite_only

from hlbd.config import config_diff
from hlbd.runner import resume_checkpoint
from hlbd.store import Store, connect, schema
from hlbd.store.buckets import (
    ROLLUP_STEPS,
    bucket_width,
    grad_norm_extremes,
    step_buckets,
    step_spans,
)


def read_engine(store):
    return connect.read_engine(store.url)


def effective_steps_by_bucket(store, run_id, buckets):
    steps = store.steps(run_id)
    for b in buckets:
        inside = [s for s in steps if b["step"] <= s["step"] < b["step"] + b["width"]]
        yield b, inside


def test_short_series_come_back_one_bucket_per_step_exactly(store, train_run):
    run_id, _ = train_run(epochs=2)
    steps = store.steps(run_id)
    buckets = step_buckets(read_engine(store), [run_id], max_points=len(steps))
    assert [b["step"] for b in buckets] == [s["step"] for s in steps]
    for b, s in zip(buckets, steps):
        assert (b["width"], b["steps"], b["epoch"]) == (1, 1, s["epoch"])
        assert b["loss"] == b["loss_min"] == b["loss_max"] == pytest.approx(s["loss"])
        assert b["grad_norm"] == pytest.approx(s["grad_norm"])
        assert b["lr"] == s["lr"]


def test_downsampling_keeps_each_buckets_extremes_so_a_one_step_spike_survives(store,
                                                                                train_run):
    # A learning rate of 50 without clipping makes real, wildly uneven grad norms.
    run_id, _ = train_run(epochs=4, lr=50.0, max_grad_norm=0.0)
    steps = store.steps(run_id)
    buckets = step_buckets(read_engine(store), [run_id], max_points=5)
    assert len(buckets) <= 6 and all(b["width"] > 1 for b in buckets)
    assert sum(b["steps"] for b in buckets) == len(steps)
    for b, inside in effective_steps_by_bucket(store, run_id, buckets):
        norms = [s["grad_norm"] for s in inside if math.isfinite(s["grad_norm"])]
        losses = [s["loss"] for s in inside if math.isfinite(s["loss"])]
        assert b["grad_norm_max"] == pytest.approx(max(norms))
        assert b["grad_norm_min"] == pytest.approx(min(norms))
        assert b["grad_norm"] == pytest.approx(sum(norms) / len(norms))
        assert b["loss_max"] == pytest.approx(max(losses))
        assert b["epoch"] == inside[0]["epoch"] and b["last_epoch"] == inside[-1]["epoch"]
    spike = max(s["grad_norm"] for s in steps if math.isfinite(s["grad_norm"]))
    assert max(b["grad_norm_max"] for b in buckets) == pytest.approx(spike)


def test_nan_and_inf_steps_are_counted_never_averaged(store, train_run):
    run_id, _ = train_run(epochs=2, lr=1e8, max_grad_norm=0, weight_decay=0.0)
    steps = store.steps(run_id)
    assert any(not math.isfinite(s["grad_norm"]) for s in steps)
    buckets = step_buckets(read_engine(store), [run_id], max_points=4)
    for b, inside in effective_steps_by_bucket(store, run_id, buckets):
        bad = [s for s in inside if not math.isfinite(s["grad_norm"])]
        assert b["grad_norm_nonfinite"] == len(bad)
        assert b["loss_nonfinite"] == sum(not math.isfinite(s["loss"]) for s in inside)
        for key in ("grad_norm", "grad_norm_min", "grad_norm_max", "loss", "loss_max"):
            assert b[key] is None or math.isfinite(b[key])


def test_superseded_steps_of_an_earlier_segment_are_left_out(store, train_run, tmp_path):
    run_id, outcome = train_run(epochs=3, save_interval=1)
    resume_checkpoint(store, outcome.run_dir / "checkpoint_epoch_1.pt", epochs=3,
                      progress=False)
    effective = store.steps(run_id)
    assert len(store.steps(run_id, include_superseded=True)) > len(effective)
    buckets = step_buckets(read_engine(store), [run_id], max_points=10_000)
    assert [(b["step"], b["segment"]) for b in buckets] == [(s["step"], s["segment"])
                                                             for s in effective]


def test_grad_norm_extremes_are_the_largest_recorded_epoch_values(store, train_run):
    run_id, _ = train_run(epochs=2)
    extremes = grad_norm_extremes(read_engine(store))[run_id]
    epochs = store.epochs(run_id)
    assert extremes["max_grad_norm"] == max(e["grad_norm_max"] for e in epochs)
    assert extremes["nonfinite_steps"] == sum(e["nonfinite_steps"] for e in epochs)


def test_config_diff_keeps_only_keys_that_differ(store, train_run):
    first, _ = train_run(epochs=1)
    second, _ = train_run(epochs=1, lr=5e-3, name="other")
    configs = {"a": store.get_run(first)["config"], "b": store.get_run(second)["config"]}
    diff = config_diff(configs)
    assert set(diff) == {k for k in configs["a"] if configs["a"][k] != configs["b"][k]}
    assert diff["lr"] == {"a": configs["a"]["lr"], "b": 5e-3}
    assert config_diff({"a": configs["a"], "c": {**configs["a"]}}) == {}


def test_infinite_steps_are_counted_and_leave_no_infinite_aggregate(store):
    # PostgreSQL's JSON writes an infinite aggregate as the string "Infinity".
    run_id = store.create_run("inf", {}, {})
    store.record_steps(run_id, 1, [
        {"step": 1, "epoch": 1, "loss": 1.0, "grad_norm": 2.0, "lr": 1e-3},
        {"step": 2, "epoch": 1, "loss": math.inf, "grad_norm": math.inf, "lr": 1e-3},
        {"step": 3, "epoch": 1, "loss": 3.0, "grad_norm": 4.0, "lr": 1e-3}])
    (bucket,) = step_buckets(read_engine(store), [run_id], max_points=1)
    assert (bucket["steps"], bucket["loss_nonfinite"], bucket["grad_norm_nonfinite"]) == (
        3, 1, 1)
    # The extremes are those of the finite values; the Inf steps are counted apart.
    assert (bucket["loss_max"], bucket["grad_norm_max"], bucket["loss_min"]) == (3.0, 4.0,
                                                                                 1.0)


def same_buckets(a: list[dict], b: list[dict]) -> bool:
    """Equal bucket lists; sums of floats may differ in the last bits."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], rel=1e-12), key
            else:
                assert x[key] == y[key], key
    return True


def test_long_series_read_from_rollups_equal_the_steps_themselves(store, train_run):
    # One pair per batch: 143 steps an epoch, long enough for rollup-wide buckets; an
    # LR of 50 without clipping gives uneven, exploding norms.
    run_id, _ = train_run(epochs=2, batch_size=1, lr=50.0, max_grad_norm=0.0)
    engine = read_engine(store)
    for width in (ROLLUP_STEPS, 2 * ROLLUP_STEPS, 3 * ROLLUP_STEPS):
        rolled = step_buckets(engine, [run_id], width=width, source="rollups")
        assert same_buckets(rolled, step_buckets(engine, [run_id], width=width,
                                                         source="steps"))
        assert sum(b["steps"] for b in rolled) == len(store.steps(run_id))
    # A zoomed range reads only its buckets, the same ones.
    part = step_buckets(engine, [run_id], width=64, steps=(100, 200))
    assert [b["step"] for b in part] == [65, 129, 193]
    assert same_buckets(part, [b for b in step_buckets(engine, [run_id], width=64)
                               if 65 <= b["step"] <= 193])


def test_rollups_written_with_awkward_batches_equal_the_steps_themselves(store):
    # The store summarises each batch column by column, with a fast path for batches
    # whose metrics are all finite: batches that cross stretches and epochs, hold NaN,
    # +-Inf and values not recorded (None), or come out of order, must roll up to what
    # the steps themselves say.
    rng = random.Random(7)
    run_id = store.create_run("awkward", {}, {})
    steps = []
    for n in range(1, 401):
        step = {"step": n, "epoch": 1 + (n - 1) // 90, "loss": rng.uniform(0.1, 3.0),
                "grad_norm": rng.uniform(0.0, 9.0), "lr": 1e-3 * (1 + n % 7)}
        if n % 37 == 0:
            step["loss"] = math.nan
        if n % 53 == 0:
            step["grad_norm"] = rng.choice([math.inf, -math.inf])
        if 200 < n <= 230:
            step["lr"] = None
        steps.append(step)
    cuts = [0, 1, 33, 100, 131, 250, 251, 320, 400]
    for a, b in itertools.pairwise(cuts):
        batch = steps[a:b]
        store.record_steps(run_id, 1, batch[::-1] if a == 131 else batch)
    engine = read_engine(store)
    for width in (ROLLUP_STEPS, 3 * ROLLUP_STEPS):
        rolled = step_buckets(engine, [run_id], width=width, source="rollups")
        assert same_buckets(rolled, step_buckets(engine, [run_id], width=width,
                                                         source="steps"))
    # The NaN steps keep their flag and store NULL, the others their values.
    stored = {s["step"]: s for s in store.steps(run_id)}
    assert math.isnan(stored[37]["loss"]) and stored[36]["loss"] == steps[35]["loss"]
    assert math.isinf(stored[53]["grad_norm"]) and stored[201]["lr"] is None


def test_rollups_of_superseded_steps_are_left_out_too(store, train_run):
    run_id, outcome = train_run(epochs=3, batch_size=2, save_interval=1)
    resume_checkpoint(store, outcome.run_dir / "checkpoint_epoch_1.pt", epochs=3,
                      progress=False)
    engine = read_engine(store)
    width = 2 * ROLLUP_STEPS
    rolled = step_buckets(engine, [run_id], width=width, source="rollups")
    assert same_buckets(rolled, step_buckets(engine, [run_id], width=width,
                                                     source="steps"))
    assert sum(b["steps"] for b in rolled) == len(store.steps(run_id))
    spans = step_spans(engine, [run_id])[run_id]
    assert spans["steps"] == len(store.steps(run_id)) == spans["last_step"]


def test_bucket_widths_grow_in_whole_rollups():
    assert bucket_width(500, 1000) == 1
    assert bucket_width(100_000, 1000) % ROLLUP_STEPS == 0
    assert 100_000 / bucket_width(100_000, 1000) <= 1000


@sqlite_only
def test_upgrading_a_0001_database_fills_rollups_and_forgets_invented_import_times(
        store, train_run, tmp_path):
    """A database of the first schema, holding a real run and an import as the first
    importer wrote it (its epochs stamped with the import time), upgraded to head."""
    run_id, _ = train_run(epochs=2, batch_size=2)
    old = tmp_path / "old.db"
    url = sqlite_at(old, "0001")
    with sqlite3.connect(old) as conn:
        conn.execute("ATTACH DATABASE ? AS new", (str(connect.sqlite_path(store.url)),))
        for table in ("runs", "segments", "epochs", "steps", "checkpoints", "anomalies"):
            # The columns 0001 has (the run was recorded at the newest schema).
            columns = ", ".join(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
            conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM new.{table}")
        # The first importer: a run whose epochs carry its creation (import) time.
        conn.execute("INSERT INTO runs (run_id, name, status, created_at, config, "
                     "dataset_stats, source) SELECT 'imp', 'old', 'imported', "
                     "'2026-01-02 03:04:05.000000', '{}', '{}', 'imported'")
        conn.execute("INSERT INTO segments (run_id, segment, start_epoch, started_at, "
                     "status) VALUES ('imp', 1, 0, '2026-01-02 03:04:05.000000', "
                     "'imported')")
        conn.execute("INSERT INTO epochs (run_id, segment, epoch, loss, loss_is_nan, "
                     "recorded_at) SELECT 'imp', 1, epoch, loss, 0, "
                     "'2026-01-02 03:04:05.000000' FROM new.epochs WHERE run_id = ?",
                     (run_id,))
    engine = connect.write_engine(url)
    schema.upgrade(engine, url)
    engine.dispose()
    upgraded = Store.open(str(old))
    engine = read_engine(upgraded)
    assert same_buckets(
        step_buckets(engine, [run_id], width=ROLLUP_STEPS, source="rollups"),
        step_buckets(engine, [run_id], width=ROLLUP_STEPS, source="steps"))
    assert [e["recorded_at"] for e in upgraded.epochs("imp")] == [None, None]
    assert all(e["recorded_at"] is not None for e in upgraded.epochs(run_id))
    with sqlite3.connect(old) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(epoch_metrics)")]
        assert columns[-1] == "recorded_at" and len(columns) == 20
        nullable = {r[1]: not r[3] for r in conn.execute("PRAGMA table_info(epochs)")}
        assert nullable["recorded_at"]
    upgraded.close()
