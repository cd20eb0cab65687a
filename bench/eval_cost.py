"""What evaluating each epoch costs hlbd train: the same run with the held-out split
evaluated every epoch (``--eval-every 1``) and with the same split never evaluated
(``--eval-every`` past the last epoch, so only the final evaluation runs).

Both train on the same pairs (the split is the same); they alternate over ``--repeats``
rounds, and it prints the ratio of median whole-run times, the median evaluation time
per epoch (``eval_seconds``, recorded apart from the epochs' training time) and the
ratio of the median training time per epoch (``wall_seconds``: it must not move, since
evaluation is not training).

    python bench/eval_cost.py [--dataset FILE] [--epochs 6] [--repeats 5]
                              [--eval-max-pairs 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hlbd.config import TrainConfig
from hlbd.runner import start_run
from hlbd.store import Store


def one_run(store: Store, root: Path, args, eval_every: int) -> tuple[float, list, list]:
    config = TrainConfig(epochs=args.epochs, eval_every=eval_every, save_interval=0,
                         device="cpu", eval_max_pairs=args.eval_max_pairs,
                         datasets=args.dataset or TrainConfig().datasets)
    started = time.perf_counter()
    outcome = start_run(config, store, runs_root=root, progress=False)
    seconds = time.perf_counter() - started
    walls = [e["wall_seconds"] for e in store.epochs(outcome.run_id)][1:]  # warm epochs
    evals = list(store.epoch_values(outcome.run_id, "eval_seconds").values())
    return seconds, walls, evals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", action="append", default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval-max-pairs", type=int, default=100)
    args = parser.parse_args()
    runs = {"every": [], "last": []}
    walls = {"every": [], "last": []}
    evals = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(str(Path(tmp) / "bench.db"))
        one_run(store, Path(tmp) / "warm", args, 1)  # first-call costs, not timed
        for i in range(args.repeats):
            for mode in ("every", "last")[::1 if i % 2 == 0 else -1]:
                every = 1 if mode == "every" else args.epochs
                seconds, wall, evaluated = one_run(store, Path(tmp) / f"{mode}{i}", args,
                                                   every)
                runs[mode].append(seconds)
                walls[mode] += wall
                if mode == "every":
                    evals += evaluated
        store.close()
    every, last = (statistics.median(runs[m]) for m in ("every", "last"))
    wall_every, wall_last = (statistics.median(walls[m]) for m in ("every", "last"))
    print(f"datasets {args.dataset or TrainConfig().datasets}: {args.epochs} epochs, "
          f"{args.repeats} runs each, --eval-max-pairs {args.eval_max_pairs}")
    print(f"whole run: evaluated every epoch {every:.2f} s, only after the last "
          f"{last:.2f} s, ratio {every / last:.3f}")
    print(f"evaluation: median {statistics.median(evals) * 1000:.1f} ms per epoch "
          f"({statistics.median(evals) / wall_every:.2f} of an epoch's training)")
    print(f"training time per epoch: {wall_every * 1000:.1f} ms vs {wall_last * 1000:.1f} ms, "
          f"ratio {wall_every / wall_last:.3f} (evaluation is recorded apart from it)")


if __name__ == "__main__":
    main()
