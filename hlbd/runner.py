"""Start or continue a recorded training run: data, store, run folder, status.

This is what ``hlbd train`` and ``hlbd resume`` call; it keeps the run's status true
whatever happens: ``finished``, ``interrupted`` (Ctrl-C, after a checkpoint) or
``failed`` (with the error), never ``running`` once the process is gone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hlbd.checkpoint import load_checkpoint
from hlbd.config import MODEL_FIELDS, TrainConfig
from hlbd.data import Pair, load_datasets, mix
from hlbd.errors import CheckpointError, HlbdError
from hlbd.recorder import StoreRecorder
from hlbd.store import Store
from hlbd.tokenizer import Tokenizer
from hlbd.trainer import Examples, TrainingInterrupted, train

DEFAULT_RUNS_DIR = "hlbd_runs"


def runs_dir(value: str | None = None) -> Path:
    """Where run folders go: the flag, else ``HLBD_RUNS_DIR``, else ``./hlbd_runs``."""
    return Path(value or os.environ.get("HLBD_RUNS_DIR") or DEFAULT_RUNS_DIR).resolve()


@dataclass
class PreparedData:
    pairs: list[Pair]
    dataset_stats: dict[str, int]


def prepare_data(config: TrainConfig) -> PreparedData:
    """Load every dataset (raising before any run exists) and mix them by the seed."""
    tagged, stats = load_datasets(config.datasets)
    return PreparedData(mix([pair for _, pair in tagged], config.seed), stats)


class RunFailed(HlbdError):
    """Training raised; the run is marked failed with the error."""


@dataclass
class RunOutcome:
    run_id: str
    status: str
    last_epoch: int
    run_dir: Path


def start_run(config: TrainConfig, store: Store, *, runs_root: Path | None = None,
              on_run_id: Callable[[str], None] = lambda _id: None,
              should_stop: Callable[[], bool] = lambda: False,
              progress: bool = True) -> RunOutcome:
    """Train a new run recorded in ``store``; returns how it ended."""
    config.validate()
    data = prepare_data(config)
    tokenizer = Tokenizer.build(t for p in data.pairs for t in (p.input, p.output))
    examples = Examples.encode(data.pairs, tokenizer, config.max_seq_len)
    run_id = uuid.uuid4().hex
    run_dir = (runs_root or runs_dir()) / run_id
    store.create_run(config.name or "run", config.to_dict(), data.dataset_stats,
                     vocab=tokenizer.vocab, run_dir=str(run_dir), run_id=run_id)
    on_run_id(run_id)
    return _run(config, store, run_id, 1, run_dir, examples, tokenizer,
                data.dataset_stats, None, should_stop, progress)


def _run(config, store, run_id, segment, run_dir, examples, tokenizer, dataset_stats,
         resume, should_stop, progress) -> RunOutcome:
    run_dir.mkdir(parents=True, exist_ok=True)
    recorder = StoreRecorder(store, run_id, segment, run_dir, dataset_stats,
                             config.to_dict())
    try:
        result = train(config, examples, tokenizer, recorder, run_dir, run_id,
                       resume=resume, segment=segment, should_stop=should_stop,
                       progress=progress)
    except TrainingInterrupted as stop:
        store.finish_run(run_id, segment, "interrupted")
        return RunOutcome(run_id, "interrupted", stop.epoch, run_dir)
    except KeyboardInterrupt:
        store.finish_run(run_id, segment, "interrupted",
                         "aborted by a second Ctrl-C before a checkpoint was saved")
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".strip()
        store.finish_run(run_id, segment, "failed", error)
        raise RunFailed(f"run {run_id} failed: {error.splitlines()[0]}") from exc
    store.finish_run(run_id, segment, "finished")
    return RunOutcome(run_id, "finished", result.last_epoch, run_dir)


def resume_run(store: Store, run_id: str, *, epochs: int | None = None,
               force: bool = False, **kwargs) -> RunOutcome:
    """Continue run ``run_id`` (an id or unique prefix) from its newest checkpoint."""
    run = store.get_run(run_id)
    _refuse_if_live(run, force)
    checkpoints = store.checkpoints(run["run_id"])
    if not checkpoints:
        raise CheckpointError(f"run {run['run_id']} has no checkpoint to resume from")
    newest = max(checkpoints, key=lambda c: (c["epoch"], c["id"]))
    state = load_checkpoint(newest["path"])
    if state["run_id"] != run["run_id"]:
        raise CheckpointError(f"{newest['path']}: belongs to run {state['run_id']}, "
                              f"not {run['run_id']}")
    return _resume(store, run, state, newest["path"], epochs, {}, **kwargs)


def resume_checkpoint(store: Store, path: str | Path, *, epochs: int | None = None,
                      overrides: dict | None = None, force: bool = False,
                      name: str | None = None, **kwargs) -> RunOutcome:
    """Continue from a checkpoint file; the run id comes from the checkpoint.

    A checkpoint of the older tool (no run id) starts a new run, marked imported, whose
    history up to the checkpoint is the lists inside it.
    """
    state = load_checkpoint(path)
    if state["run_id"] is None:
        run = _import_checkpoint_run(store, state, str(path), name)
    else:
        run = store.get_run(state["run_id"])
        _refuse_if_live(run, force)
    return _resume(store, run, state, str(path), epochs, overrides or {}, **kwargs)


def _refuse_if_live(run: dict, force: bool) -> None:
    if run["display_status"] == "running" and not force:
        raise HlbdError(f"run {run['run_id']} is still being written by process "
                        f"{run.get('pid')} on {run.get('hostname')}; stop it first, or pass "
                        "--force if that process is gone")


def _resume(store: Store, run: dict, state: dict, path: str, epochs: int | None,
            overrides: dict, *, on_run_id: Callable[[str], None] = lambda _id: None,
            should_stop: Callable[[], bool] = lambda: False,
            progress: bool = True) -> RunOutcome:
    config = TrainConfig.from_dict(state["config"])
    contradictions = [f"--{k.replace('_', '-')} {v} (checkpoint: {getattr(config, k)})"
                      for k, v in overrides.items()
                      if k in MODEL_FIELDS + ("datasets", "seed") and v != getattr(config, k)]
    if contradictions:
        raise CheckpointError(f"{path}: flags contradict the checkpoint's config: "
                              f"{'; '.join(contradictions)}")
    for key, value in overrides.items():
        if key not in MODEL_FIELDS + ("datasets", "seed"):
            setattr(config, key, value)
    if epochs is not None:
        config.epochs = epochs
    config.validate()
    if config.epochs <= state["epoch"]:
        raise HlbdError(f"run {run['run_id']} is already at epoch {state['epoch']}; pass "
                        f"--epochs N with N > {state['epoch']} as the new total")
    data = prepare_data(config)
    tokenizer = Tokenizer(state["vocab"])
    if run.get("source") == "hlbd" and data.dataset_stats != run["dataset_stats"]:
        raise HlbdError(f"the datasets of run {run['run_id']} changed since it started "
                        f"(now {data.dataset_stats}, then {run['dataset_stats']}); resuming "
                        "would not continue the same run")
    examples = Examples.encode(data.pairs, tokenizer, config.max_seq_len)
    segment = store.begin_segment(run["run_id"], state["epoch"], resumed_from=path)
    on_run_id(run["run_id"])
    run_dir = Path(run["run_dir"]) if run.get("run_dir") else runs_dir() / run["run_id"]
    return _run(config, store, run["run_id"], segment, run_dir, examples, tokenizer,
                data.dataset_stats, state, should_stop, progress)


def _import_checkpoint_run(store: Store, state: dict, path: str, name: str | None) -> dict:
    config = TrainConfig.from_dict(state["config"])
    history = state["history"]
    data = prepare_data(config)
    run_id = uuid.uuid4().hex
    store.create_run(name or config.name or "imported", config.to_dict(), data.dataset_stats,
                     vocab=state["vocab"], run_dir=str(runs_dir() / run_id),
                     source="imported", extra={"imported_from": path}, run_id=run_id,
                     status="interrupted")
    losses = history.get("control_losses", [])[: state["epoch"]]
    norms = history.get("grad_norms") or []
    lrs = history.get("learning_rates") or []
    for i, loss in enumerate(losses):
        store.record_epoch(run_id, 1, {
            "epoch": i + 1, "loss": loss,
            "grad_norm": norms[i] if i < len(norms) else None,
            "lr": lrs[i] if i < len(lrs) else None})
    return store.get_run(run_id)
