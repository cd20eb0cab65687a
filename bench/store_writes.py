"""Step writes through the store against raw sqlite3 executemany, in one run.

Writes 100,000 optimizer steps x 3 metrics (loss, grad norm, LR) in batches of 1,000
(the trainer's flush) through Store.record_steps, and the same rows with raw sqlite3
executemany into an identical schema in the same WAL mode, and prints the rate ratio.
Goal: store rate >= 0.5 of raw.

    python bench/store_writes.py [--steps 100000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from hlbd.store import Store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    args = parser.parse_args()
    rng = random.Random(0)
    steps = [{"step": i + 1, "epoch": i // 5000 + 1, "loss": rng.random(),
              "grad_norm": rng.random() * 3, "lr": 1e-3} for i in range(args.steps)]
    batches = [steps[i:i + args.batch] for i in range(0, len(steps), args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(str(Path(tmp) / "store.db"))
        run_id = store.create_run("bench", {}, {})
        started = time.perf_counter()
        for batch in batches:
            store.record_steps(run_id, 1, batch)
        ours = time.perf_counter() - started
        store.close()

        # Raw: the same table, pragmas and one transaction per batch, no SQLAlchemy.
        Store.open(str(Path(tmp) / "raw.db")).close()
        conn = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("INSERT INTO runs (run_id, name, status, created_at, config, "
                     "dataset_stats, source) VALUES ('r', 'raw', 'running', "
                     "'2026-01-01', '{}', '{}', 'hlbd')")
        started = time.perf_counter()
        for batch in batches:
            conn.execute("BEGIN IMMEDIATE")
            # The same columns the store writes: NULL and a flag for a NaN (none here).
            conn.executemany(
                "INSERT INTO steps (run_id, segment, step, epoch, loss, loss_is_nan, "
                "grad_norm, grad_norm_is_nan, lr, lr_is_nan) "
                "VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
                [("r", s["step"], s["epoch"], s["loss"], s["loss"] != s["loss"],
                  s["grad_norm"], s["grad_norm"] != s["grad_norm"], s["lr"],
                  s["lr"] != s["lr"]) for s in batch])
            conn.execute("COMMIT")
        raw = time.perf_counter() - started
        conn.close()
    n = args.steps
    print(f"{n} steps x 3 metrics in batches of {args.batch}")
    print(f"store (SQLAlchemy): {ours:.3f} s  {n / ours:,.0f} steps/s")
    print(f"raw sqlite3:        {raw:.3f} s  {n / raw:,.0f} steps/s")
    print(f"ratio store/raw rate: {raw / ours:.2f}  (goal >= 0.5)")


if __name__ == "__main__":
    main()
