"""Checkpoints: plain dicts of tensors and numbers, written atomically.

Everything needed to continue a run exactly is inside: run id, epoch, model, optimizer,
scheduler, AMP scaler, RNG states, vocabulary, config and the history lists. Every
checkpoint loads with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from hlbd.errors import CheckpointError
from hlbd.fileio import write_atomically

log = logging.getLogger(__name__)

FORMAT = "hlbd-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("epoch", "model", "optimizer", "scheduler", "vocab", "config", "history")
# What torch.load raises on a truncated or foreign file (the legacy, non-zip reader
# fails inside pickle with whatever the garbage leads to).
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError,
               IndexError, KeyError, TypeError, AttributeError)
SHAPES = {"epoch": int, "model": dict, "optimizer": dict, "scheduler": dict, "vocab": list,
          "config": dict, "history": dict}


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / f"checkpoint_epoch_{epoch}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> int:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename); returns bytes.

    A write that fails (disk full, file size limit) raises CheckpointError; the
    checkpoints already on disk are untouched.
    """
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    failed: list[OSError] = []

    def write(f) -> None:
        torch.save(state, _WriteErrors(f, failed))

    try:
        return write_atomically(Path(path), write)
    except (OSError, RuntimeError) as error:
        # torch.save turns the file's OSError into a RuntimeError about zip positions;
        # the OSError kept on the way says what happened (disk full, file too large).
        cause = failed[0] if failed else error
        reason = getattr(cause, "strerror", None) or " ".join(str(cause).split())[:200]
        raise CheckpointError(f"{path}: could not write the checkpoint ({reason}); the "
                              "checkpoints written before it are intact") from None


class _WriteErrors:
    """A binary file whose write errors are also kept in ``failed``."""

    def __init__(self, file, failed: list[OSError]):
        self._file = file
        self._failed = failed

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self._failed.append(error)
            raise

    def flush(self) -> None:
        self._file.flush()


def lowest(candidates: list[dict], by_epoch: dict[int, float]) -> tuple[float, dict] | None:
    """The checkpoint candidate whose epoch has the lowest finite value in ``by_epoch``
    (val_loss, or the training loss), with that value; None if none has one."""
    scored = [(by_epoch[c["epoch"]], c) for c in candidates
              if by_epoch.get(c["epoch"]) is not None and math.isfinite(by_epoch[c["epoch"]])]
    return min(scored, key=lambda pair: pair[0]) if scored else None


def prune_checkpoints(store, run_id: str, segment: int, keep: int) -> list[Path]:
    """Delete the checkpoint files of ``run_id`` beyond the newest ``keep`` that a resume
    could use (0: none deleted), and beyond the best one (its epoch had the lowest
    val_loss: what ``--checkpoint best`` takes); returns the files deleted.

    Called by segment ``segment`` after its newest checkpoint is written and recorded.
    Counted are ``store.checkpoint_candidates`` (the effective history's, newest first)
    whose file is there at its recorded size: a missing or damaged file is kept but not
    counted, so the newest good ones stay. The rows are marked pruned before their
    files go: a kill in between leaves a marked file, which the next call deletes, and
    never a listed resume point without its file. A file a kept candidate names, or not
    named as hlbd names checkpoints, is never deleted.
    """
    if keep <= 0:
        return []
    kept, good = set(), 0
    candidates = store.checkpoint_candidates(run_id)
    for candidate in candidates:
        if good == keep:
            break
        kept.add(candidate["path"])
        good += _intact(candidate)
    best = lowest([c for c in candidates if _intact(c)],
                  store.epoch_values(run_id, "val_loss"))
    if best is not None:
        kept.add(best[1]["path"])
    rows = store.checkpoints(run_id)
    store.mark_checkpoints_pruned(run_id, segment, [
        r["id"] for r in rows if r["pruned_at"] is None and r["path"] not in kept])
    doomed = {r["path"] for r in rows if r["path"] not in kept
              and Path(r["path"]).name == checkpoint_path(Path(), r["epoch"]).name}
    deleted = []
    for path in sorted(doomed, key=str):
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as error:  # the next checkpoint tries again
            log.warning("could not delete pruned checkpoint %s: %s", path,
                        error.strerror or error)
            continue
        deleted.append(Path(path))
    return deleted


def _intact(candidate: dict) -> bool:
    """Whether a candidate's file is there, at its recorded size when one was recorded."""
    try:
        size = os.path.getsize(candidate["path"])
    except OSError:
        return False
    return candidate["size_bytes"] is None or size == candidate["size_bytes"]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint; a missing, truncated or foreign file is refused.

    A checkpoint of the older tool (no run id, no format marker) loads if it has the
    training state; its ``run_id`` is None.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as exc:
        reason = _load_failure(exc)
        if reason.startswith("Unsupported global"):
            raise CheckpointError(f"{path}: not a loadable checkpoint: it holds objects "
                                  "torch.load(weights_only=True) refuses to unpickle "
                                  f"({reason})") from None
        raise CheckpointError(f"{path}: not a loadable checkpoint (truncated or not a "
                              f"torch file): {reason}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an hlbd checkpoint (holds a "
                              f"{type(state).__name__}, not a dict)")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not an hlbd checkpoint (missing "
                              f"{', '.join(missing)})")
    wrong = [key for key, kind in SHAPES.items() if not isinstance(state[key], kind)]
    if wrong or isinstance(state["epoch"], bool) or state["epoch"] < 0:
        raise CheckpointError(f"{path}: not an hlbd checkpoint (malformed "
                              f"{', '.join(wrong) or 'epoch'})")
    if state.get("format") not in (None, FORMAT):
        raise CheckpointError(f"{path}: unknown checkpoint format {state.get('format')!r}")
    if state.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version "
                              f"{state['format_version']} is newer than this hlbd knows")
    state.setdefault("run_id", None)
    return state


def _load_failure(exc: Exception) -> str:
    """The informative part of a torch.load error, on one line."""
    text = str(exc).strip()
    # The weights-only unpickler wraps its reason in paragraphs of advice.
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    line = found.group(1) if found else (text.splitlines()[0] if text else "")
    return (line.split(". ")[0].strip() or type(exc).__name__)[:200]
