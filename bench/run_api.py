"""What hlbd.Run costs a loop of one's own: the same loop recorded and not, and one
``run.log`` call next to a plain list append (and trackio / offline wandb when installed).

The loop: an MLP on CPU (``--hidden`` sets the width, so the step's time), two parameter
groups, clipping, a per-epoch scheduler, ``run.log`` of 4 scalar tensors per step; it
prints the ratio and what recording costs a step in microseconds (watch's hooks, the
clip's copy, log's copies, and the recording thread's share of the cores). Recorded and unrecorded runs alternate; the
ratio is of the medians of whole loops (goal <= 1.02). Per call: the p50 of
``run.log({4 scalar tensors})`` in microseconds, and of ``list.append`` of the same
values (the floor: what any logger must at least do).

    python bench/run_api.py [--epochs 5] [--steps 200] [--repeats 7] [--calls 20000]
                            [--hidden 256]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import hlbd


def loop(run, epochs: int, steps: int, hidden: int = 256, seed: int = 0) -> float:
    """Seconds of the loop; ``run`` None: the same loop without recording."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 64))
    optimizer = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-3},
                                   {"params": model[2].parameters(), "lr": 5e-4}])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=2)
    clip = run.clip_grad_norm_ if run else torch.nn.utils.clip_grad_norm_
    if run:
        run.watch(optimizer, scheduler)
    x = torch.randn(steps, 32, 64)
    started = time.perf_counter()
    for _ in range(epochs):
        for i in range(steps):
            out = model(x[i])
            loss = torch.nn.functional.mse_loss(out, x[i])
            optimizer.zero_grad()
            loss.backward()
            norm = clip(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():  # what the loop computes either way; only log() differs
                values = {"loss": loss.detach(), "ppl": loss.detach().exp(),
                          "acc": (out - x[i]).abs().lt(0.5).float().mean(),
                          "norm2": norm * norm}
            if run:
                run.log(values)
        scheduler.step()
        if run:
            run.end_epoch()
    return time.perf_counter() - started


def per_call(log, calls: int) -> float:
    """p50 microseconds of ``log(values)`` with 4 fresh scalar tensors each call."""
    values = [{"loss": torch.tensor(float(i)), "ppl": torch.tensor(2.0),
               "acc": torch.tensor(0.5), "norm2": torch.tensor(1.0)} for i in range(calls)]
    times = []
    for v in values:
        t = time.perf_counter_ns()
        log(v)
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--hidden", type=int, default=256,
                        help="the MLP's width: the step's time (the ratio's denominator)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        db, runs = str(Path(folder) / "bench.db"), str(Path(folder) / "runs")
        times = {"recorded": [], "unrecorded": []}
        for i in range(args.repeats):
            for mode in (("recorded", "unrecorded") if i % 2 else ("unrecorded", "recorded")):
                if mode == "recorded":
                    with hlbd.init(db=db, runs_dir=runs) as run:
                        times[mode].append(loop(run, args.epochs, args.steps, args.hidden))
                else:
                    times[mode].append(loop(None, args.epochs, args.steps, args.hidden))
        medians = {m: statistics.median(t) for m, t in times.items()}
        print(f"loop: {args.epochs} epochs x {args.steps} steps, {args.repeats} repeats each")
        for mode, t in times.items():
            print(f"  {mode:10s} median {medians[mode]:.3f} s  runs {[round(v, 3) for v in t]}")
        steps = args.epochs * args.steps
        print(f"ratio recorded/unrecorded: {medians['recorded'] / medians['unrecorded']:.3f}"
              f"  (goal <= 1.02); a step {medians['unrecorded'] / steps * 1e6:.0f} us, "
              f"recording {(medians['recorded'] - medians['unrecorded']) / steps * 1e6:.0f}"
              " us of it")

        print(f"one call with 4 scalar tensors, p50 of {args.calls:,}:")
        kept: list = []
        floor = per_call(kept.append, args.calls)
        print(f"  list.append          {floor:8.2f} us")
        with hlbd.init(db=db, runs_dir=runs) as run:
            ours = per_call(run.log, args.calls)
        print(f"  hlbd run.log         {ours:8.2f} us  ({ours / floor:.1f} x append)")
        for name, log in peers(folder):
            theirs = per_call(log, args.calls)
            print(f"  {name:20s} {theirs:8.2f} us  ({theirs / floor:.1f} x append, "
                  f"{theirs / ours:.2f} x hlbd)")


def peers(folder: str):
    """(name, log) of the peers installed here, each set up offline in ``folder``."""
    if importlib.util.find_spec("trackio"):
        import trackio

        os.environ.setdefault("TRACKIO_DIR", folder)
        trackio.init(project="bench")
        # trackio drops a tensor value (a warning, "not JSON serializable"), so its users
        # pass floats: the .item() per value is part of its call (a host sync on CUDA).
        yield "trackio.log(.item())", lambda values: trackio.log(
            {k: v.item() for k, v in values.items()})
        with contextlib.suppress(Exception):
            trackio.finish()
    if importlib.util.find_spec("wandb"):
        import wandb

        run = wandb.init(project="bench", mode="offline", dir=folder)
        yield "wandb.log (offline)", run.log
        run.finish()


if __name__ == "__main__":
    main()
