"""What HlbdCallback and HlbdLogger cost a framework's training: the same tiny run with
no reporting and recorded, alternated, and (Trainer) with ``report_to="tensorboard"``
when tensorboard is installed.

Trainer: the 2-layer GPT-2 of tests/helpers/hf.py (48 HLBD facts, batch 8 x 2
accumulation) for ``--epochs``; Lightning: an MLP regression (``--hidden`` wide) for
``--epochs`` epochs of ``--batches`` batches. The ratio is of the medians of whole
``train()`` / ``fit()`` calls (goal <= 1.03); the first run of each kind is a warm-up
and not counted. The recorded runs share one database, as a user's runs do (the warm-up
creates it: a new SQLite file's schema costs about 0.1 s once).

A recorded run pays once to start and end the run in the store (open it, create the
run; write what is left, the status, close it) and then per step; the first is timed
inside the callback (``start+end``) and ``per-step ratio`` is the ratio without it,
which is what a longer run tends to. torch runs on ``--threads`` threads (1 by
default): on a busy machine OpenMP threads waiting for each other made the same run
take from 1 to 10 times as long.

    python bench/integrations.py [--repeats 7] [--epochs 4] [--threads 1]
                                 [--only trainer|lightning]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


class StartEnd:
    """Seconds spent in the calls that start and end a recorded run."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def timed(self, call, *args, **kwargs):
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def trainer_run(kind: str, folder: Path, epochs: int) -> tuple[float, float]:
    """(seconds of train(), of them starting and ending the hlbd run)."""
    from helpers import hf

    from hlbd.integrations.transformers import HlbdCallback

    start_end = StartEnd()

    class Timed(HlbdCallback):
        def on_train_begin(self, *args, **kwargs):
            return start_end.timed(super().on_train_begin, *args, **kwargs)

        def on_train_end(self, *args, **kwargs):
            return start_end.timed(super().on_train_end, *args, **kwargs)

    callbacks = [Timed(db=str(folder.parent / "runs.db"), runs_dir=str(folder))] \
        if kind == "hlbd" else []
    report = "tensorboard" if kind == "tensorboard" else "none"
    trainer = hf.trainer(folder / kind, callbacks, epochs=epochs, report_to=report,
                         eval_strategy="no", logging_steps=500)
    with contextlib.redirect_stdout(io.StringIO()):  # the per-step log lines
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started, start_end.seconds


def lightning_run(kind: str, folder: Path, epochs: int, batches: int,
                  hidden: int) -> tuple[float, float]:
    """(seconds of fit(), of them starting and ending the hlbd run)."""
    import lightning.pytorch as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from hlbd.integrations.lightning import HlbdLogger

    start_end = StartEnd()

    class Timed(HlbdLogger):
        def _open(self, trainer):
            return start_end.timed(super()._open, trainer)

        def finalize(self, status):
            return start_end.timed(super().finalize, status)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("mse", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    x = torch.randn(batches * 32, 64, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=32)
    if kind == "hlbd":
        logger = Timed(db=str(folder.parent / "runs.db"), runs_dir=str(folder))
        extra = {"logger": logger, "callbacks": [logger.callback()]}
    else:
        extra = {"logger": False}
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1,
                        gradient_clip_val=1.0, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=str(folder), **extra)
    started = time.perf_counter()
    trainer.fit(Module(), data)
    return time.perf_counter() - started, start_end.seconds


def folder(root: str, name: str) -> Path:
    path = Path(root) / name
    path.mkdir()
    return path


def compare(name: str, steps: int, kinds: list[str], run, repeats: int) -> None:
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for k in kinds:  # warm-up: imports, first compilation of kernels
            run(k, folder(tmp, f"warm-{k}"))
        for i in range(repeats):
            for k in kinds if i % 2 == 0 else reversed(kinds):
                times[k].append(run(k, folder(tmp, f"{k}-{i}")))
    whole = {k: [t for t, _ in times[k]] for k in kinds}
    base = statistics.median(whole["none"])
    print(f"{name}: median of {repeats} whole runs of {steps} optimizer steps, "
          f"none = {base:.3f} s")
    for k in kinds[1:]:
        median = statistics.median(whole[k])
        line = (f"  {k:12s} {median:.3f} s  ratio {median / base:.3f}"
                f"  (min {min(whole[k]) / min(whole['none']):.3f} of min)")
        start_end = [fixed for _, fixed in times[k]]
        if any(start_end):
            rest = statistics.median(t - fixed for t, fixed in times[k])
            line += (f"  start+end {statistics.median(start_end) * 1e3:.0f} ms,"
                     f" per-step ratio {rest / base:.3f}")
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["trainer", "lightning"])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.only != "lightning":
        kinds = ["none", "hlbd"]
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            kinds.append("tensorboard")
        else:
            print("tensorboard not installed: the Trainer is compared with no reporting only")
        # 48 facts, batches of 8, 2 accumulated: 3 optimizer steps an epoch.
        compare("transformers.Trainer", 3 * args.epochs, kinds,
                lambda k, f: trainer_run(k, f, args.epochs), args.repeats)
    if args.only != "trainer":
        compare("Lightning", args.batches * args.epochs, ["none", "hlbd"],
                lambda k, f: lightning_run(k, f, args.epochs, args.batches, args.hidden),
                args.repeats)


if __name__ == "__main__":
    main()
