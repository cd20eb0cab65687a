"""How long the explorer's compare query takes on 20 runs x 100,000 steps.

The steps are the real per-step rows of one tiny training run, repeated to length and
written through the store's step writer into a temporary database. The bench times
``hlbd.store.buckets.step_buckets`` (downsampled in SQL, each bucket's extremes kept) against
plain sqlite3 reading the same rows, and prints both and their ratio (best of --repeat).

Usage: python bench/compare_query.py [--runs 20] [--steps 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from hlbd.config import TrainConfig
from hlbd.runner import start_run
from hlbd.store import Store, connect
from hlbd.store.buckets import DEFAULT_MAX_POINTS, step_buckets

BATCH = 10_000


def real_steps(store: Store, root: Path) -> list[dict]:
    config = TrainConfig(name="source", epochs=5, d_model=32, n_layers=1, n_heads=2,
                         d_ff=64, dropout=0.0, save_interval=0, device="cpu")
    run_id = start_run(config, store, runs_root=root / "runs", progress=False).run_id
    return store.steps(run_id)


def fill(store: Store, source: list[dict], runs: int, steps: int) -> list[str]:
    """``runs`` runs of ``steps`` steps, their numbers taken in turn from ``source``."""
    per_epoch = max(s["step"] for s in source if s["epoch"] == 1)
    ids = []
    for r in range(runs):
        run_id = store.create_run(f"bench-{r}", {"bench": True}, {"bench": steps},
                                  status="finished")
        rows = [{"step": n, "epoch": (n - 1) // per_epoch + 1, "loss": s["loss"],
                 "grad_norm": s["grad_norm"], "lr": s["lr"]}
                for n, s in zip(range(1, steps + 1), itertools.cycle(source))]
        for start in range(0, steps, BATCH):
            store.record_steps(run_id, 1, rows[start:start + BATCH])
        ids.append(run_id)
    return ids


def best_of(repeat: int, call) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-points", type=int, default=DEFAULT_MAX_POINTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        store = Store.open(str(path))
        started = time.perf_counter()
        ids = fill(store, real_steps(store, Path(tmp)), args.runs, args.steps)
        written = time.perf_counter() - started
        store.close()
        rows = args.runs * args.steps
        print(f"wrote {args.runs} runs x {args.steps:,} steps ({rows:,} rows) through the "
              f"store's step writer in {written:.1f} s")

        engine = connect.read_engine(connect.resolve_db_url(str(path)))
        raw = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        marks = ",".join("?" * len(ids))
        raw_sql = ("SELECT run_id, step, epoch, loss, loss_is_nan, grad_norm, "
                   f"grad_norm_is_nan, lr FROM step_metrics WHERE run_id IN ({marks})")
        # Warm the page cache for both before timing either.
        step_buckets(engine, ids, args.max_points)
        raw.execute(raw_sql, ids).fetchall()
        ours, buckets = best_of(args.repeat,
                                lambda: step_buckets(engine, ids, args.max_points))
        theirs, raw_rows = best_of(args.repeat, lambda: raw.execute(raw_sql, ids).fetchall())
        assert len(raw_rows) == rows and sum(b["steps"] for b in buckets) == rows
        print(f"compare query, downsampled in SQL to {len(buckets):,} buckets "
              f"(<= {args.max_points} per run, min/max kept): {ours:.3f} s")
        print(f"raw sqlite3 reading the same {rows:,} rows:{' ' * 22}{theirs:.3f} s")
        print(f"ratio compare/raw: {ours / theirs:.2f}  (goal: under 1 s and within 2x of "
              f"raw; best of {args.repeat})")
        engine.dispose()
        raw.close()


if __name__ == "__main__":
    sys.exit(main())
