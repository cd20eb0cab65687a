"""What HlbdCallback and HlbdLogger cost a framework's training: the same tiny run with
no reporting and recorded, alternated, and (Trainer) with ``report_to="tensorboard"``
when tensorboard is installed.

Trainer: the 2-layer GPT-2 of tests/helpers/hf.py (48 HLBD facts, batch 8 x 2
accumulation) for ``--epochs``; Lightning: an MLP regression (``--hidden`` wide) for
``--epochs`` epochs of ``--batches`` batches. The ratio is of the medians of whole
``train()`` / ``fit()`` calls (goal <= 1.03); the first run of each kind is a warm-up
and not counted. The recorded runs share one database, as a user's runs do (the warm-up
creates it: a new SQLite file's schema costs about 0.1 s once).

    python bench/integrations.py [--repeats 7] [--epochs 4] [--only trainer|lightning]
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


def trainer_run(kind: str, folder: Path, epochs: int) -> float:
    from helpers import hf

    from hlbd.integrations.transformers import HlbdCallback

    callbacks = [HlbdCallback(db=str(folder.parent / "runs.db"), runs_dir=str(folder))] \
        if kind == "hlbd" else []
    report = "tensorboard" if kind == "tensorboard" else "none"
    trainer = hf.trainer(folder / kind, callbacks, epochs=epochs, report_to=report,
                         eval_strategy="no", logging_steps=500)
    with contextlib.redirect_stdout(io.StringIO()):  # the per-step log lines
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def lightning_run(kind: str, folder: Path, epochs: int, batches: int, hidden: int) -> float:
    import lightning.pytorch as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from hlbd.integrations.lightning import HlbdLogger

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
        logger = HlbdLogger(db=str(folder.parent / "runs.db"), runs_dir=str(folder))
        extra = {"logger": logger, "callbacks": [logger.callback()]}
    else:
        extra = {"logger": False}
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1,
                        gradient_clip_val=1.0, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=str(folder), **extra)
    started = time.perf_counter()
    trainer.fit(Module(), data)
    return time.perf_counter() - started


def folder(root: str, name: str) -> Path:
    path = Path(root) / name
    path.mkdir()
    return path


def compare(name: str, kinds: list[str], run, repeats: int) -> None:
    times: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for k in kinds:  # warm-up: imports, first compilation of kernels
            run(k, folder(tmp, f"warm-{k}"))
        for i in range(repeats):
            for k in kinds if i % 2 == 0 else reversed(kinds):
                times[k].append(run(k, folder(tmp, f"{k}-{i}")))
    base = statistics.median(times["none"])
    print(f"{name}: median of {repeats} whole runs, none = {base:.3f} s")
    for k in kinds[1:]:
        median = statistics.median(times[k])
        print(f"  {k:12s} {median:.3f} s  ratio {median / base:.3f}"
              f"  (min {min(times[k]) / min(times['none']):.3f} of min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--only", choices=["trainer", "lightning"])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.only != "lightning":
        kinds = ["none", "hlbd"]
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            kinds.append("tensorboard")
        else:
            print("tensorboard not installed: the Trainer is compared with no reporting only")
        compare("transformers.Trainer", kinds,
                lambda k, f: trainer_run(k, f, args.epochs), args.repeats)
    if args.only != "trainer":
        compare("Lightning", ["none", "hlbd"],
                lambda k, f: lightning_run(k, f, args.epochs, args.batches, args.hidden),
                args.repeats)


if __name__ == "__main__":
    main()
