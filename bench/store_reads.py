"""Reading one run's steps through the store against a plain sqlite3 SELECT, in one run.

Writes a run of 100,000 optimizer steps through the store, then reads them back, in
alternating order, with Store.steps (what `hlbd export`, `hlbd anomalies` and the
explorer's anomaly list use: dicts, NaN flags joined) and with a plain sqlite3 SELECT of
the same rows and columns in the same order (tuples), and prints the ratio of the median
rates (wall time; CPU time too, steadier on a busy machine). Goal: store >= 0.5 of plain.

    python bench/store_reads.py [--steps 100000] [--repeats 7]
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

PLAIN = ("SELECT segment, step, epoch, loss, loss_is_nan, grad_norm, grad_norm_is_nan, lr, "
         "lr_is_nan, superseded_by FROM steps WHERE run_id = ? AND superseded_by IS NULL "
         "ORDER BY step, segment")


def timed(read) -> tuple[float, float, int]:
    """(wall, CPU) seconds of ``read()`` and the number of rows it returned."""
    wall, cpu = time.perf_counter(), time.process_time()
    rows = read()
    return time.perf_counter() - wall, time.process_time() - cpu, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(0)
    steps = [{"step": i + 1, "epoch": i // 5000 + 1, "loss": rng.random(),
              "grad_norm": rng.random() * 3, "lr": 1e-3} for i in range(args.steps)]
    times: dict[str, list[tuple[float, float, int]]] = {"store": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runs.db"
        writer = Store.open(str(path))
        run_id = writer.create_run("bench", {}, {})
        for i in range(0, len(steps), 1000):
            writer.record_steps(run_id, 1, steps[i:i + 1000])
        writer.close()
        store = Store.open_read_only(str(path))
        plain = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        readers = {"store": lambda: store.steps(run_id),
                   "plain": lambda: plain.execute(PLAIN, (run_id,)).fetchall()}
        for read in readers.values():  # warm the page cache and the statement caches
            read()
        for i in range(args.repeats):
            # Alternate which goes first, so drift on a shared machine hits both alike.
            for mode in ("store", "plain")[::1 if i % 2 == 0 else -1]:
                times[mode].append(timed(readers[mode]))
        plain.close()
        store.close()
    assert {t[2] for m in times for t in times[m]} == {args.steps}
    print(f"one run of {args.steps} steps, read {args.repeats} times each")
    medians = {}
    for mode, label in (("store", "Store.steps"), ("plain", "plain sqlite3 SELECT")):
        wall = statistics.median(t[0] for t in times[mode])
        cpu = statistics.median(t[1] for t in times[mode])
        medians[mode] = wall, cpu
        print(f"{label:20} wall median {wall * 1000:.0f} ms, CPU median {cpu * 1000:.0f} ms"
              f"  runs {[round(t[0] * 1000) for t in times[mode]]}")
    print(f"ratio store/plain rate: wall median {medians['plain'][0] / medians['store'][0]:.2f}, "
          f"CPU median {medians['plain'][1] / medians['store'][1]:.2f}  (goal >= 0.5)")


if __name__ == "__main__":
    main()
