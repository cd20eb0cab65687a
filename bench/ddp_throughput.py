"""Throughput of 1 vs 2 training processes (torchrun, DDP on gloo), recording on and off.

Each measurement is a fresh process (or torchrun with 2): it trains one untimed warm-up
epoch (recorded like the timed ones), then ``--epochs`` timed epochs of the default model; tokens/s counts the
sequence tokens of all ranks. "recording on" is the store (SQLite) + report + anomaly
rules on rank 0 through hlbd.Run, its writes in the recorder's thread, drained inside
the timing; "off" is an hlbd.Run with no store (the same calls, nothing recorded). The four setups alternate order over ``--repeats`` rounds, and
medians are compared. Goal: recording costs <= 2 % at either world size.

On a machine shared with other work, wall times swing by 2x between launches, more
than the 2 % to be seen. So it also prints rank 0's CPU time (all its threads) and,
with recording on, the time the training thread spent inside hlbd.Run's calls and the
time the recorder's thread spent writing, as shares of the timed training: those do
not depend on what else the machine runs.

    python bench/ddp_throughput.py [--dataset ../shared/data/HLBD_Hardcore_Full.json]
                                   [--epochs 3] [--repeats 3]

Every process runs ``--threads`` torch threads (default 1, torchrun's own default for
several processes), so the number of processes is what changes between setups; on a
machine shared with other work, more threads than free cores make torch's thread pool
spin and the timings meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / \
    "HLBD_Hardcore_Full.json"


def worker(args: argparse.Namespace) -> None:
    """One measurement, inside the launched process(es); rank 0 prints a JSON line."""
    from hlbd.config import TrainConfig
    from hlbd.distributed import from_environment
    from hlbd.runner import prepare_data
    from hlbd.sequences import Examples
    from hlbd.store import Store
    from hlbd.tokenizer import Tokenizer
    from hlbd.trainer import train

    ranks = from_environment(120)
    config = TrainConfig(datasets=[args.dataset], epochs=args.epochs, save_interval=0,
                         device="cpu", world_size=ranks.world_size)
    data = prepare_data(config)
    tokenizer = Tokenizer.build(data.texts())
    examples = Examples.encode(data.pairs, tokenizer, config.max_seq_len)
    out = Path(args.out)
    store = Store.open(str(out / "bench.db")) if args.record == "on" and ranks.is_main \
        else None
    Timed = timed_run()

    def run_for(run_config: TrainConfig):
        if store is None:  # the same loop and calls, nothing recorded
            return Timed(None, run_id="untracked", run_dir=out / f"untracked{ranks.rank}")
        run_id = store.create_run("bench", run_config.to_dict(), data.dataset_stats,
                                  hosts=ranks.hosts)
        return Timed(store, run_id=run_id, run_dir=out / run_id,
                     config=run_config.to_dict(), dataset_stats=data.dataset_stats,
                     schedule=run_config.to_dict(),
                     flush_steps=run_config.step_flush_interval, owns_store=False)

    # Warm-up, not timed: first-call costs of torch, and of the store when recording.
    warm = TrainConfig(**{**config.to_dict(), "epochs": 1})
    run = run_for(warm)
    train(warm, examples, tokenizer, run, progress=False, ranks=ranks)
    run.finish()
    run = run_for(config)
    ranks.barrier()
    started, cpu_started = time.perf_counter(), time.process_time()
    train(config, examples, tokenizer, run, progress=False, ranks=ranks)
    run.finish()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if ranks.is_main:
        tokens = sum(examples.lengths) * config.epochs
        writes = run._recorder.busy_seconds if run._recorder is not None else 0.0
        print(json.dumps({"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu,
                          "call_seconds": run.seconds, "write_seconds": writes}), flush=True)
    if store is not None:
        store.close()
    ranks.close()


def timed_run():
    """hlbd.Run with the time the training thread spends in its calls added up (the
    calls the trainer makes, and the optimizer's step hooks)."""
    from hlbd.run import Run

    class Timed(Run):
        seconds = 0.0

    def timing(name: str):
        method = getattr(Run, name)

        def timed(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
        return timed

    for name in ("log", "_log_skipped", "clip_grad_norm_", "end_epoch", "checkpoint",
                 "finish", "_before_step", "_after_step"):
        setattr(Timed, name, timing(name))
    return Timed


def measure(world: int, record: str, args: argparse.Namespace, tmp: Path) -> dict:
    """One fresh launch: rank 0's tokens, wall and CPU seconds, time in recording."""
    out = Path(tempfile.mkdtemp(dir=tmp))
    me = [str(Path(__file__).resolve()), "--worker", "--record", record, "--dataset",
          args.dataset, "--epochs", str(args.epochs), "--out", str(out)]
    if world == 1:
        command = [sys.executable, *me]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={world}", *me]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env,
                          timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"measurement failed ({world} processes, recording {record}):\n"
                         f"{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not Path(args.dataset).is_file():
        raise SystemExit(f"{args.dataset}: dataset not found; pass --dataset FILE")
    setups = [(1, "off"), (1, "on"), (2, "off"), (2, "on")]
    results: dict[tuple[int, str], list[dict]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            # Rotate the order, so drift on a shared machine hits every setup alike.
            for setup in setups[i % 4:] + setups[:i % 4]:
                results[setup].append(measure(*setup, args, Path(tmp)))
    rates = {s: [r["tokens"] / r["seconds"] for r in rs] for s, rs in results.items()}
    median = {s: statistics.median(r) for s, r in rates.items()}
    cpu_median = {s: statistics.median(r["cpu_seconds"] / r["tokens"] for r in rs)
                  for s, rs in results.items()}
    print(f"dataset {args.dataset}: {args.epochs} timed epochs, {args.repeats} launches "
          f"per setup, {args.threads} thread(s) per process, cpu count {os.cpu_count()}")
    for (world, record), values in rates.items():
        print(f"{world} process(es), recording {record:3}: median "
              f"{median[(world, record)]:9.0f} tokens/s  runs {[round(v) for v in values]}"
              f"  rank 0 CPU {cpu_median[(world, record)] * 1e6:.1f} us/token")
    for world in (1, 2):
        cost = median[(world, "off")] / median[(world, "on")]
        cpu_cost = cpu_median[(world, "on")] / cpu_median[(world, "off")]
        share = {key: statistics.median(r[key] / r["seconds"] for r in results[(world, "on")])
                 for key in ("call_seconds", "write_seconds")}
        print(f"recording cost at {world} process(es): wall time ratio on/off {cost:.3f}, "
              f"rank 0 CPU time ratio {cpu_cost:.3f} (goal <= 1.02); of the timed "
              f"training, the training thread spent {share['call_seconds']:.2%} in "
              f"recorder calls, the recorder's thread {share['write_seconds']:.2%} writing")
    for record in ("off", "on"):
        print(f"2 vs 1 processes, recording {record}: throughput ratio "
              f"{median[(2, record)] / median[(1, record)]:.3f}")


if __name__ == "__main__":
    main()
