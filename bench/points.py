"""Long series of a loop's own names (the points table): writes through the store against
raw sqlite3 executemany, and one series read back against a plain SELECT on the view.

Writes ``--steps`` values of 4 names in batches of 500 (hlbd.Run's flush) through
Store.record_steps(points=...), and the same rows with raw executemany into a copy of
the same database in the same transaction shape, alternating which goes first (goal:
store rate >= 0.8 of raw). Then reads one name's series back with Store.series against
``SELECT step, value, value_is_nan FROM metric_points WHERE ...`` on plain sqlite3 (goal:
store time <= 1.5x the SELECT's; Store.series gives (step, value) pairs).

    python bench/points.py [--steps 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from hlbd.store import Store
from hlbd.store.rows import POINT_COLUMNS, insert_sql, point_rows

KEYS = ("acc", "ppl", "val/loss", "lr/1")
BATCH = 500


def batches(steps: int) -> list[list[tuple]]:
    rng = random.Random(0)
    points = [(key, "step", step, 1 + step // 1000, rng.random())
              for step in range(1, steps + 1) for key in KEYS]
    size = BATCH * len(KEYS)
    return [points[i:i + size] for i in range(0, len(points), size)]


def through_store(db: Path, chunks: list[list[tuple]]) -> float:
    store = Store.open(str(db))
    run_id = store.create_run("bench", {}, {})
    started = time.perf_counter()
    for chunk in chunks:
        store.record_steps(run_id, 1, [], chunk)
    seconds = time.perf_counter() - started
    store.close()
    return seconds


def raw(db: Path, chunks: list[list[tuple]]) -> float:
    Store.open(str(db)).close()  # the same schema
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    run_id = "0" * 32
    conn.execute("INSERT INTO runs (run_id, name, status, created_at, config, dataset_stats, "
                 "source) VALUES (?, 'raw', 'running', '2026-01-01', '{}', '{}', 'hlbd')",
                 (run_id,))
    statement = insert_sql("points", POINT_COLUMNS, "?")
    started = time.perf_counter()
    for chunk in chunks:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(statement, point_rows(run_id, 1, chunk))
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    chunks = batches(args.steps)
    rows = args.steps * len(KEYS)
    times = {"store": [], "raw": []}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.repeats):
            for name in (("store", "raw") if i % 2 else ("raw", "store")):
                db = Path(folder) / f"{name}{i}.db"
                times[name].append((through_store if name == "store" else raw)(db, chunks))
        medians = {k: statistics.median(v) for k, v in times.items()}
        print(f"{rows:,} points ({args.steps:,} steps x {len(KEYS)} names), batches of "
              f"{BATCH} steps, {args.repeats} repeats")
        for name, t in times.items():
            print(f"  {name:6s} median {medians[name]:.3f} s ({rows / medians[name]:,.0f} "
                  f"points/s)  runs {[round(v, 3) for v in t]}")
        print(f"ratio store/raw rate: {medians['raw'] / medians['store']:.2f}  (goal >= 0.8)")

        db = Path(folder) / "store0.db"
        store = Store.open_read_only(str(db))
        run_id = store.list_runs()[0]["run_id"]
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        reads = {"store": [], "select": []}
        for _ in range(args.repeats):
            started = time.perf_counter()
            ours = store.series(run_id, "lr/1")
            reads["store"].append(time.perf_counter() - started)
            started = time.perf_counter()
            plain = conn.execute("SELECT step, value, value_is_nan FROM metric_points WHERE "
                                 "run_id = ? AND key = ? ORDER BY step",
                                 (run_id, "lr/1")).fetchall()
            reads["select"].append(time.perf_counter() - started)
        assert len(ours) == len(plain) == args.steps
        store.close()
        conn.close()
        read = {k: statistics.median(v) * 1000 for k, v in reads.items()}
        print(f"one series of {args.steps:,} steps read back: Store.series "
              f"{read['store']:.0f} ms, plain SELECT on metric_points {read['select']:.0f} ms,"
              f" ratio {read['store'] / read['select']:.2f}  (goal <= 1.5)")


if __name__ == "__main__":
    main()
