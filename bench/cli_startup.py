"""Wall time of commands that do not train, against Python itself and the old way, in one run.

Runs `hlbd --help` and `hlbd runs` (on a store holding one tiny trained run) as fresh
processes, and for comparison `python -c pass` and the same two commands with torch
imported first (what every command did before it was left to training alone). Prints
the median of --repeat runs of each and the ratios. Goal: each command <= 0.5 s.

    python bench/cli_startup.py [--repeat 5] [--db PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Each command as the old code ran it: torch imported before the CLI.
OLD_WAY = "import sys, torch; from hlbd.cli import main; sys.argv[0] = 'hlbd'; main()"


def seconds(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, timeout=120, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def tiny_store(folder: Path) -> str:
    from hlbd.config import TrainConfig
    from hlbd.runner import start_run
    from hlbd.store import Store

    db = str(folder / "bench.db")
    store = Store.open(db)
    config = TrainConfig(epochs=1, d_model=32, n_layers=1, n_heads=2, d_ff=64, device="cpu",
                         save_interval=0)
    start_run(config, store, runs_root=folder / "runs", progress=False)
    store.close()
    return db


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", default=None, help="A store for `hlbd runs` [default: a "
                        "new one with one tiny run]")
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = args.db or tiny_store(folder)
        cases = {
            "python -c pass": [py, "-c", "pass"],
            "hlbd --help": [py, "-m", "hlbd", "--help"],
            "hlbd runs": [py, "-m", "hlbd", "runs", "--db", db],
            "old way: hlbd --help": [py, "-c", OLD_WAY, "--help"],
            "old way: hlbd runs": [py, "-c", OLD_WAY, "runs", "--db", db],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        seconds(cases["hlbd runs"], folder)  # warm the page cache
        for _ in range(args.repeat):  # interleaved, so load changes hit every case alike
            for name, argv in cases.items():
                times[name].append(seconds(argv, folder))
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["python -c pass"]
    print(f"median of {args.repeat} runs each (seconds)")
    for name, value in median.items():
        print(f"  {name:24s} {value:6.3f}  ({value / base:5.1f} x python -c pass)")
    for command in ("hlbd --help", "hlbd runs"):
        print(f"{command}: {median[command]:.3f} s, {median[command] / median['old way: ' + command]:.2f}"
              f" of the old way ({median['old way: ' + command]:.3f} s); goal <= 0.5 s")


if __name__ == "__main__":
    main()
