"""A trained run's model: which checkpoint (newest, best, a file of the run), loaded to
answer a question (``hlbd generate``) or to be scored on an HLBD file (``hlbd eval``).

``best`` is the checkpoint whose epoch had the lowest validation loss, when the run
recorded one, else the lowest training loss; ``newest`` the newest on the run's
effective history. Both choose among the checkpoints whose files are still on disk; a
file named by path that was pruned or is missing is an error that says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hlbd.checkpoint import load_checkpoint, lowest
from hlbd.config import TrainConfig
from hlbd.data import BUNDLED, bundled_dataset, load_dataset
from hlbd.errors import CheckpointError, HlbdError
from hlbd.evaluate import HeldOut, held_out_metrics
from hlbd.model import build_model
from hlbd.store import Store
from hlbd.tokenizer import Tokenizer

CHOICES = ("newest", "best")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chosen:
    """A checkpoint of a run: its file, the epoch (and step) it holds, why it was taken."""

    path: str
    epoch: int
    step: int | None
    why: str


@dataclass
class Trained:
    model: torch.nn.Module
    tokenizer: Tokenizer
    config: TrainConfig


def choose_checkpoint(store: Store, run_id: str, which: str = "newest") -> Chosen:
    """The checkpoint ``which`` (newest, best, or a path) of run ``run_id``;
    CheckpointError naming what is missing, pruned or foreign."""
    if which not in CHOICES:
        return _named(store, run_id, which)
    present = [c for c in store.checkpoint_candidates(run_id) if Path(c["path"]).exists()]
    if not present:
        gone = store.checkpoints(run_id)
        raise CheckpointError(
            f"run {run_id} has no checkpoint file on disk"
            + (f" ({len(gone)} recorded: pruned or deleted)" if gone else
               " (none was recorded)"))
    if which == "newest":
        c = present[0]
        return Chosen(c["path"], c["epoch"], c["step"], f"newest: epoch {c['epoch']}")
    return _best(store, run_id, present)


def _best(store: Store, run_id: str, present: list[dict]) -> Chosen:
    val = store.epoch_values(run_id, "val_loss")
    train = {e["epoch"]: e["loss"] for e in store.epochs(run_id)}
    for name, by_epoch in (("val_loss", val), ("training loss", train)):
        best = lowest(present, by_epoch)
        if best is not None:
            value, c = best
            return Chosen(c["path"], c["epoch"], c["step"],
                          f"best: epoch {c['epoch']}, lowest {name} {value:.4g} of the "
                          f"{len(present)} checkpoint(s) on disk")
    c = present[0]
    return Chosen(c["path"], c["epoch"], c["step"],
                  f"best: epoch {c['epoch']} (no loss recorded to choose by: the newest)")


def _named(store: Store, run_id: str, path: str) -> Chosen:
    resolved = Path(path).resolve()
    rows = [c for c in store.checkpoints(run_id) if Path(c["path"]) == resolved]
    pruned = [c for c in rows if c["pruned_at"] is not None]
    if pruned and not resolved.exists():
        raise CheckpointError(
            f"{path}: this checkpoint of run {run_id} (epoch {pruned[-1]['epoch']}) was "
            f"pruned at {pruned[-1]['pruned_at']:%Y-%m-%d %H:%M:%S} UTC (--keep-checkpoints); "
            "--checkpoint newest or best takes one still on disk")
    if not resolved.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    state = load_checkpoint(resolved)
    if state["run_id"] != run_id:
        raise CheckpointError(f"{path}: a checkpoint of run {state['run_id']}, not of run "
                              f"{run_id}")
    return Chosen(str(resolved), state["epoch"], state.get("global_step"),
                  f"{resolved.name}: epoch {state['epoch']}")


def load_trained(path: str, device: torch.device) -> Trained:
    """The model, tokenizer and config of a checkpoint file, on ``device``."""
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    tokenizer = Tokenizer(state["vocab"])
    model = build_model(len(tokenizer), config)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return Trained(model, tokenizer, config)


@dataclass
class Evaluation:
    """An evaluation of a run's checkpoint on a dataset file: its values by name, and
    ``recorded`` False when the same one (same checkpoint and dataset bytes, same
    number of decoded pairs) was recorded before and was not run again."""

    values: dict[str, float]
    identity: dict
    recorded: bool
    evaluated_at: object = None


def evaluate_file(store: Store, run_id: str, chosen: Chosen, dataset: str, *,
                  max_pairs: int | None, device: torch.device) -> Evaluation:
    """Score ``chosen`` on every pair of ``dataset`` (greedy answers for the first
    ``max_pairs``, all when None) and record it as an evaluation of ``run_id``."""
    pairs = load_dataset(dataset)
    decoded = len(pairs) if max_pairs is None else min(max_pairs, len(pairs))
    identity = {"checkpoint": chosen.path, "checkpoint_epoch": chosen.epoch,
                "checkpoint_step": chosen.step, "checkpoint_sha256": file_sha256(chosen.path),
                "dataset": dataset, "dataset_sha256": dataset_sha256(dataset),
                "pairs": len(pairs), "exact_pairs": decoded}
    before = _recorded(store, run_id, identity)
    if before is not None:
        return before
    trained = load_trained(chosen.path, device)
    try:
        held = HeldOut.encode(pairs, trained.tokenizer, trained.config.max_seq_len)
    except HlbdError as too_long:
        raise HlbdError(f"{dataset}: its questions do not fit the run's model "
                        f"(max_seq_len {trained.config.max_seq_len}): {too_long}") from None
    log.info("scoring %d pairs, %d of them answered by greedy decoding (--max-pairs "
             "bounds that)", len(pairs), decoded)
    began = time.perf_counter()
    measured = held_out_metrics(trained.model, held, trained.tokenizer, device,
                                max_pairs=decoded)
    identity["seconds"] = time.perf_counter() - began
    values = {k: v for k, v in measured.items() if k not in ("pairs", "exact_pairs")}
    if not store.record_evaluation(run_id, identity, values):
        return _recorded(store, run_id, identity)  # by another process, meanwhile
    return Evaluation(values, identity, True)


def _recorded(store: Store, run_id: str, identity: dict) -> Evaluation | None:
    for before in store.evaluations(run_id):
        if all(before[k] == identity[k]
               for k in ("checkpoint_sha256", "dataset_sha256", "exact_pairs")):
            return Evaluation(before["values"], before, False, before["evaluated_at"])
    return None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_sha256(dataset: str) -> str:
    """The SHA-256 of a dataset file's bytes (of the bundled data's JSON, for it)."""
    if dataset == BUNDLED:
        text = json.dumps(bundled_dataset(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()
    return file_sha256(dataset)
