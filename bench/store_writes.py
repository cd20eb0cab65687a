"""Step writes through the store against raw sqlite3 executemany, in one run.

Writes 100,000 optimizer steps x 3 metrics (loss, grad norm, LR) in batches of 100, 500
(the trainer's flush, --step-flush-interval) and 1,000 through Store.record_steps, and
the same rows with raw sqlite3 executemany into an identical schema in the same WAL mode and pragmas, for a run created
the same way (so the rows, run id included, are the same), alternating which goes first,
and prints the ratio of the median rates (wall time; CPU time too, steadier on a busy
machine). The store also writes the steps' rollups and checks the run's claim in each
transaction; raw inserts the steps alone. Goal: store rate >= 0.8 of raw.

    python bench/store_writes.py [--steps 100000] [--batch 100 500 1000] [--repeats 7]
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


def timed(write) -> tuple[float, float]:
    """(wall, CPU) seconds of ``write()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    write()
    return time.perf_counter() - wall, time.process_time() - cpu


def through_store(path: Path, batches: list[list[dict]]) -> tuple[float, float]:
    store = Store.open(str(path))
    run_id = store.create_run("bench", {}, {})

    def write() -> None:
        for batch in batches:
            store.record_steps(run_id, 1, batch)

    spent = timed(write)
    store.close()
    return spent


def raw(path: Path, batches: list[list[dict]]) -> tuple[float, float]:
    """The same table, pragmas, run and one transaction per batch, no SQLAlchemy."""
    store = Store.open(str(path))
    run_id = store.create_run("bench", {}, {})
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")

    def write() -> None:
        for batch in batches:
            conn.execute("BEGIN IMMEDIATE")
            # The same columns the store writes: NULL and a flag for a NaN (none here).
            conn.executemany(
                "INSERT INTO steps (run_id, segment, step, epoch, loss, loss_is_nan, "
                "grad_norm, grad_norm_is_nan, lr, lr_is_nan) "
                "VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, s["step"], s["epoch"], s["loss"], s["loss"] != s["loss"],
                  s["grad_norm"], s["grad_norm"] != s["grad_norm"], s["lr"],
                  s["lr"] != s["lr"]) for s in batch])
            conn.execute("COMMIT")

    spent = timed(write)
    conn.close()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[100, 500, 1_000],
                        help="steps per write (the trainer writes 500 at most, or the "
                        "rest of an epoch)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(0)
    steps = [{"step": i + 1, "epoch": i // 5000 + 1, "loss": rng.random(),
              "grad_norm": rng.random() * 3, "lr": 1e-3} for i in range(args.steps)]
    n = args.steps
    print(f"{n} steps x 3 metrics, {args.repeats} repeats each")
    for size in args.batch:
        batches = [steps[i:i + size] for i in range(0, len(steps), size)]
        times: dict[str, list[tuple[float, float]]] = {"store": [], "raw": []}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats):
                # Alternate which goes first, so drift on a shared machine hits both alike.
                for mode in ("store", "raw")[::1 if i % 2 == 0 else -1]:
                    write = through_store if mode == "store" else raw
                    times[mode].append(write(Path(tmp) / f"{mode}{i}.db", batches))
        print(f"batches of {size}:")
        medians = {}
        for mode, label in (("store", "store (SQLAlchemy)"), ("raw", "raw sqlite3")):
            wall = statistics.median(t[0] for t in times[mode])
            cpu = statistics.median(t[1] for t in times[mode])
            medians[mode] = wall, cpu
            print(f"  {label:19} wall median {wall:.3f} s ({n / wall:,.0f} steps/s), "
                  f"CPU median {cpu:.3f} s  runs {[round(t[0], 3) for t in times[mode]]}")
        print(f"  ratio store/raw rate: wall median "
              f"{medians['raw'][0] / medians['store'][0]:.2f}, CPU median "
              f"{medians['raw'][1] / medians['store'][1]:.2f}  (goal >= 0.8)")

if __name__ == "__main__":
    main()
