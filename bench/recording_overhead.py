"""What recording costs: the same training with the store + report and with nothing.

Trains the default model on the bundled data, alternating untracked (an hlbd.Run with
no store: the same calls, nothing recorded) and tracked (hlbd.Run as hlbd train records:
epoch rows, step rows, anomaly rules, JSON report) runs, and
prints the ratio of median wall times of whole runs, of median epoch times (each
epoch's own wall time as the trainer measures it, the first epoch of each run left out:
many samples, so far less noisy than a few whole runs; the recording thread's work for
an epoch overlaps the next epoch, so it is in these times), and of median CPU times of
the whole process (training and the recording thread: what recording costs when every
core is busy). Goal: <= 1.01.

    python bench/recording_overhead.py [--epochs 10] [--repeats 7] [--dataset FILE] [--threads N]

Recording costs about 1 ms of CPU per epoch (one transaction, the report, the rules;
the report's JSON was 3 ms of it until it went through json's C encoder), done in the
recorder's thread; the ratio is worst for the bundled data's very short epochs (~75 ms
on 2 idle cores), where that thread competes for the same cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hlbd.config import TrainConfig
from hlbd.run import Run
from hlbd.runner import prepare_data
from hlbd.sequences import Examples
from hlbd.store import Store
from hlbd.tokenizer import Tokenizer
from hlbd.trainer import train


class EpochTimes(Run):
    """A Run (recording or, with no store, not) that keeps each epoch's wall time as the
    trainer measured it."""

    def __init__(self, store, times: list[float], **kwargs):
        super().__init__(store, **kwargs)
        self.times = times

    def end_epoch(self, metrics=None, **columns) -> None:
        if self.epoch >= 1:  # the first epoch pays one-off costs in both modes
            self.times.append(columns["wall_seconds"])
        super().end_epoch(metrics, **columns)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dataset", action="append", default=None,
                        help="HLBD file(s) instead of the bundled data (longer epochs)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(epochs=args.epochs, save_interval=0, device="cpu")
    if args.dataset:
        config.datasets = args.dataset
    data = prepare_data(config)
    tokenizer = Tokenizer.build(data.texts())
    examples = Examples.encode(data.pairs, tokenizer, config.max_seq_len)
    times: dict[str, list[float]] = {"untracked": [], "tracked": []}
    cpu: dict[str, list[float]] = {"untracked": [], "tracked": []}
    epochs: dict[str, list[float]] = {"untracked": [], "tracked": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(str(Path(tmp) / "bench.db"))
        # Warm-up (first-call costs of torch and the allocator), not timed.
        train(config, examples, tokenizer, Run(None, run_dir=Path(tmp) / "warm"),
              progress=False)
        for i in range(args.repeats):
            # Alternate which goes first, so drift on a shared machine hits both alike.
            for mode in ("untracked", "tracked")[::1 if i % 2 == 0 else -1]:
                run_dir = Path(tmp) / f"{mode}{i}"
                if mode == "tracked":  # as hlbd.runner records a run of hlbd train
                    run_id = store.create_run("bench", config.to_dict(), data.dataset_stats)
                    run = EpochTimes(store, epochs[mode], run_id=run_id, run_dir=run_dir,
                                     config=config.to_dict(),
                                     dataset_stats=data.dataset_stats,
                                     schedule=config.to_dict(),
                                     flush_steps=config.step_flush_interval,
                                     owns_store=False)
                else:  # the same loop and calls, nothing recorded
                    run = EpochTimes(None, epochs[mode], run_id="untracked", run_dir=run_dir)
                started, cpu_started = time.perf_counter(), time.process_time()
                train(config, examples, tokenizer, run, progress=False)
                run.finish()  # the recording thread's last writes count too
                times[mode].append(time.perf_counter() - started)
                cpu[mode].append(time.process_time() - cpu_started)
        store.close()
    untracked, tracked = (statistics.median(times[m]) for m in ("untracked", "tracked"))
    print(f"datasets {config.datasets}: epochs {args.epochs}, {len(examples)} sequences, {args.repeats} repeats each")
    print(f"untracked median {untracked:.3f} s  runs {[round(t, 3) for t in times['untracked']]}")
    print(f"tracked   median {tracked:.3f} s  runs {[round(t, 3) for t in times['tracked']]}")
    print(f"ratio tracked/untracked: median {tracked / untracked:.3f}, best "
          f"{min(times['tracked']) / min(times['untracked']):.3f}  (goal <= 1.01)")
    untracked_epoch, tracked_epoch = (statistics.median(epochs[m])
                                      for m in ("untracked", "tracked"))
    print(f"epochs: untracked median {untracked_epoch * 1000:.1f} ms, tracked median "
          f"{tracked_epoch * 1000:.1f} ms ({len(epochs['tracked'])} epochs each), ratio "
          f"{tracked_epoch / untracked_epoch:.3f}  (goal <= 1.01)")
    untracked_cpu, tracked_cpu = (statistics.median(cpu[m]) for m in ("untracked", "tracked"))
    print(f"CPU (all threads): untracked median {untracked_cpu:.3f} s, tracked median "
          f"{tracked_cpu:.3f} s, ratio {tracked_cpu / untracked_cpu:.3f}")


if __name__ == "__main__":
    main()
