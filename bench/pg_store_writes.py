"""Step writes through the store into PostgreSQL against raw psycopg, in one run.

Writes 100,000 optimizer steps x 3 metrics (loss, grad norm, LR) in batches of 1,000
(the trainer's flush) through Store.record_steps, and the same rows with raw psycopg
``executemany`` and with ``COPY ... FROM STDIN`` into the same table, one transaction
per batch each, and prints the rate ratios. Each path runs twice, alternating; the best
of each counts. The bench's runs are deleted at the end.
Goal: store rate >= 0.5 of the faster raw path.

    python bench/pg_store_writes.py --db postgresql+psycopg://me@host/db [--steps 100000]

Without --db: a database of its own, created (and dropped) on the server HLBD_TEST_PG
names, e.g. after eval "$(.ci/pg-server start)".
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from hlbd.store import STEP_COLUMNS, Store

COLUMNS = STEP_COLUMNS  # the columns the store writes, flags included


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default=None)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    args = parser.parse_args()
    if args.db:
        run(args)
        return
    server = os.environ.get("HLBD_TEST_PG")
    if not server or not server.startswith("postgresql"):
        sys.exit("pass --db postgresql+psycopg://... (or set HLBD_TEST_PG to a server URL)")
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"hlbd_bench_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        args.db = make_url(server).set(database=name).render_as_string(hide_password=False)
        run(args)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def run(args) -> None:
    rng = random.Random(0)
    steps = [{"step": i + 1, "epoch": i // 5000 + 1, "loss": rng.random(),
              "grad_norm": rng.random() * 3, "lr": 1e-3} for i in range(args.steps)]
    batches = [steps[i:i + args.batch] for i in range(0, len(steps), args.batch)]

    store = Store.open(args.db)
    raw = psycopg.connect(make_url(args.db).set(drivername="postgresql")
                          .render_as_string(hide_password=False))
    runs = []

    def new_run() -> str:
        run_id = store.create_run("bench-" + uuid.uuid4().hex[:6], {}, {})
        runs.append(run_id)
        return run_id

    def through_store() -> float:
        run_id = new_run()
        started = time.perf_counter()
        for batch in batches:
            store.record_steps(run_id, 1, batch)
        return time.perf_counter() - started

    def rows(run_id, batch):
        # NULL and a flag for a NaN (none here), as the store writes them.
        return [(run_id, 1, s["step"], s["epoch"], s["loss"], s["loss"] != s["loss"],
                 s["grad_norm"], s["grad_norm"] != s["grad_norm"], s["lr"],
                 s["lr"] != s["lr"]) for s in batch]

    def executemany() -> float:
        run_id = new_run()
        started = time.perf_counter()
        for batch in batches:
            with raw.transaction(), raw.cursor() as cur:
                cur.executemany(f"INSERT INTO steps ({COLUMNS}) VALUES "
                                f"({', '.join(['%s'] * 10)})", rows(run_id, batch))
        return time.perf_counter() - started

    def copy() -> float:
        run_id = new_run()
        started = time.perf_counter()
        for batch in batches:
            with raw.transaction(), raw.cursor() as cur, cur.copy(
                    f"COPY steps ({COLUMNS}) FROM STDIN") as out:
                for row in rows(run_id, batch):
                    out.write_row(row)
        return time.perf_counter() - started

    times = {"store": [], "executemany": [], "copy": []}
    try:
        for _ in range(2):
            for name, path in (("store", through_store), ("executemany", executemany),
                               ("copy", copy)):
                times[name].append(path())
    finally:
        with raw.transaction(), raw.cursor() as cur:
            for table in ("step_rollups", "steps", "segments", "runs"):
                cur.execute(f"DELETE FROM {table} WHERE run_id = ANY(%s)", (runs,))
        raw.close()
        store.close()
    n = args.steps
    best = {name: min(t) for name, t in times.items()}
    print(f"{n} steps x 3 metrics in batches of {args.batch}, best of 2 (PostgreSQL)")
    for name, label in (("store", "store (SQLAlchemy)"), ("executemany", "raw executemany"),
                        ("copy", "raw COPY")):
        print(f"{label:20s} {best[name]:.3f} s  {n / best[name]:,.0f} steps/s")
    faster = min(best["executemany"], best["copy"])
    print(f"ratio store/executemany rate: {best['executemany'] / best['store']:.2f}")
    print(f"ratio store/COPY rate:        {best['copy'] / best['store']:.2f}")
    print(f"ratio store/faster raw rate:  {faster / best['store']:.2f}  (goal >= 0.5)")


if __name__ == "__main__":
    main()
