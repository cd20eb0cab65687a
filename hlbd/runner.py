"""Start or continue a recorded training run: data, store, run folder, status.

This is what ``hlbd train`` and ``hlbd resume`` call; it keeps the run's status true
whatever happens: ``finished``, ``interrupted`` (Ctrl-C, after a checkpoint) or
``failed`` (with the error), never ``running`` once the process is gone.

Under torchrun rank 0 runs these functions (it alone reads and writes the store) and
launches the other ranks with everything they need to train; they run ``follow``.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from hlbd.checkpoint import load_checkpoint
from hlbd.config import RESUME_SETTABLE, TrainConfig
from hlbd.data import Pair, load_dataset, load_datasets, mix
from hlbd.distributed import Ranks
from hlbd.errors import CheckpointError, ClaimLostError, HlbdError, UnknownRunError
from hlbd.evaluate import HeldOut
from hlbd.fileio import remove_temp_files
from hlbd.recorder import store_locked, wait_out_locks
from hlbd.report import EPOCH_LISTS
from hlbd.run import ResumedFrom, Run, runs_dir
from hlbd.sequences import Examples
from hlbd.split import MIN_PAIRS, Split, default_fraction, split_file, split_pairs
from hlbd.store import Store, superseded
from hlbd.store.claims import still_being_written
from hlbd.tokenizer import Tokenizer
from hlbd.trainer import TrainingStopped, check_device, check_resumable, train

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    pairs: list[Pair]  # to train on, mixed by the seed
    dataset_stats: dict[str, int]
    held_out: list[Pair] = field(default_factory=list)  # to evaluate on

    def texts(self) -> Iterator[str]:
        """Every text of the data, held-out pairs too: the vocabulary's source."""
        for pair in (*self.pairs, *self.held_out):
            yield pair.input
            yield pair.output

    def encode(self, tokenizer: Tokenizer, config: TrainConfig) -> tuple[Examples,
                                                                          HeldOut | None]:
        """The training sequences and the held-out pairs (None without any) as ids."""
        examples = Examples.encode(self.pairs, tokenizer, config.max_seq_len)
        held_out = (HeldOut.encode(self.held_out, tokenizer, config.max_seq_len)
                    if self.held_out else None)
        return examples, held_out


def prepare_data(config: TrainConfig) -> PreparedData:
    """Load every dataset (raising before any run exists), hold out the split and mix
    the rest by the seed. Sets ``config.val_fraction`` (its default resolved) and
    ``config.split``; HlbdError when a split is recorded in ``config`` and the data no
    longer gives it (a resume on changed data)."""
    tagged, stats = load_datasets(config.datasets)
    pairs = [pair for _, pair in tagged]
    if config.val_dataset:
        split = split_file(pairs, load_dataset(config.val_dataset), config.val_dataset)
    else:
        if config.val_fraction is None:
            config.val_fraction = default_fraction(len(pairs))
            if not config.val_fraction:
                log.warning("%d pairs (fewer than %d): nothing is held out to evaluate on "
                            "(--val-fraction F holds out a share, --val-dataset FILE a "
                            "file)", len(pairs), MIN_PAIRS)
        split = (split_pairs(pairs, config.val_fraction, config.seed)
                 if config.val_fraction else Split(pairs, [], {}))
    recorded = (config.split or {}).get("held_out_sha256")
    if recorded and recorded != split.info.get("held_out_sha256"):
        raise HlbdError(f"the held-out pairs are not the ones the run was evaluated on "
                        f"(their hash was {recorded[:12]}..., now "
                        f"{split.info.get('held_out_sha256', 'none')[:12]}...): the data or "
                        "--val-dataset changed since the run started")
    config.split = split.info or None
    return PreparedData(mix(split.train, config.seed), stats, split.held_out)


class RunFailed(HlbdError):
    """Training raised; the run is marked failed with the error."""


class StoppedBeforeStart(HlbdError):
    """A stop was asked for (Ctrl-C, SIGTERM) before the run or resume began: nothing
    was written."""


def _stop_if_asked(should_stop: Callable[[], bool], what: str) -> None:
    if should_stop():
        raise StoppedBeforeStart(f"stopped before the {what} started: nothing was recorded")


def _when_unlocked(should_stop: Callable[[], bool], what: str,
                   write: Callable[[], Any]) -> Any:
    """``write()``, the first write of a run, once no other process holds the store's
    lock (a long import, a copy, a backup: the start waits, and says so); a stop asked
    for while waiting ends it with nothing recorded."""
    try:
        return wait_out_locks(write, give_up=should_stop,
                              meanwhile=f"the {what} starts when it is free (Ctrl-C stops)")
    except OperationalError as error:
        if store_locked(error):
            _stop_if_asked(should_stop, what)
        raise


@dataclass
class RunOutcome:
    run_id: str
    status: str
    last_epoch: int
    run_dir: Path


def check_config(config: TrainConfig) -> None:
    """Every flag checked, the device too: HlbdError naming the first bad one."""
    config.validate()
    check_device(config.device)


def start_run(config: TrainConfig, store: Store, *, runs_root: Path | None = None,
              on_run_id: Callable[[str], None] = lambda _id: None,
              should_stop: Callable[[], bool] = lambda: False,
              progress: bool = True, ranks: Ranks | None = None) -> RunOutcome:
    """Train a new run recorded in ``store``; returns how it ended.

    Everything is checked and loaded before the run exists: a bad flag or dataset, or a
    stop asked for meanwhile (``should_stop``), leaves no trace. From the moment the
    run exists, every way out sets its status. ``ranks``: under torchrun, rank 0's Ranks
    (the other ranks run ``follow``).
    """
    ranks = ranks or Ranks()
    _set_processes(config, ranks)
    check_config(config)
    data = prepare_data(config)
    _stop_if_asked(should_stop, "run")
    tokenizer = Tokenizer.build(data.texts())
    examples, held_out = data.encode(tokenizer, config)
    _stop_if_asked(should_stop, "run")
    run_id = uuid.uuid4().hex
    run_dir = (runs_root or runs_dir()) / run_id
    _when_unlocked(should_stop, "run", functools.partial(
        store.create_run, config.name or "run", config.to_dict(), data.dataset_stats,
        vocab=tokenizer.vocab, run_dir=str(run_dir), run_id=run_id, hosts=ranks.hosts))
    return _run(config, store, run_id, 1, run_dir, examples, tokenizer,
                data.dataset_stats, None, should_stop, progress, on_run_id, ranks,
                held_out=held_out)


def _set_processes(config: TrainConfig, ranks: Ranks) -> None:
    """Record in the config how many processes train and the backend between them."""
    config.world_size = ranks.world_size
    config.backend = ranks.backend(check_device(config.device))


def _run(config, store, run_id, segment, run_dir, examples, tokenizer, dataset_stats,
         resume, should_stop, progress, on_run_id, ranks,
         resume_path: str | None = None, held_out: HeldOut | None = None) -> RunOutcome:
    """Train segment ``segment`` (already claimed), recording through an ``hlbd.Run`` of
    it, and set how it ended."""
    run = None
    try:
        on_run_id(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        # This segment holds the run: a temp file in its folder is a write that a killed
        # segment never finished (a partial checkpoint, as large as a whole one).
        for partial in remove_temp_files(run_dir):
            log.info("removed %s, left by a segment killed while writing it", partial.name)
        run = Run(store, run_id=run_id, segment=segment, run_dir=run_dir,
                  config=config.to_dict(), resumed_from=_resumed_from(resume, resume_path),
                  dataset_stats=dataset_stats, schedule=config.to_dict(),
                  flush_steps=config.step_flush_interval, owns_store=False)
        ranks.launch({"run_id": run_id, "segment": segment, "run_dir": str(run_dir),
                      "config": config.to_dict(), "vocab": tokenizer.vocab,
                      "examples": examples, "held_out": held_out, "resume": resume,
                      "resume_path": resume_path})
        result = train(config, examples, tokenizer, run, held_out=held_out, resume=resume,
                       should_stop=should_stop, progress=progress, ranks=ranks)
    except TrainingStopped as stop:
        _end(store, run_id, segment, run, "interrupted")
        ranks.barrier()  # the other ranks exit once the run's status says so
        return RunOutcome(run_id, "interrupted", stop.epoch, run_dir)
    except ClaimLostError as lost:
        raise RunFailed(str(lost)) from None  # the run is the later segment's now
    except KeyboardInterrupt:
        _end(store, run_id, segment, run, "interrupted",
             "aborted by a second Ctrl-C before a checkpoint was saved")
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".strip()
        if isinstance(exc, HlbdError):
            error = str(exc)
        _end(store, run_id, segment, run, "failed", error)
        raise RunFailed(f"run {run_id} failed: {error.splitlines()[0]}") from exc
    _end(store, run_id, segment, run, "finished")
    ranks.barrier()
    return RunOutcome(run_id, "finished", result.last_epoch, run_dir)


def _resumed_from(state: dict | None, path: str | None):
    """Where a segment that loaded checkpoint ``state`` (from ``path``) continues."""
    if state is None:
        return None
    step = state.get("global_step", len(state["history"]["batch_losses"]))
    return ResumedFrom(path, state["epoch"], step)


def _end(store: Store, run_id: str, segment: int, run, status: str,
         error: str | None = None) -> None:
    """Every row handed over is in the store, then the segment's end (RunFailed when a
    later segment took the run over). ``run`` None: it ended before its Run existed."""
    if run is None:
        _close(store, run_id, segment, status, error)
        return
    try:
        run.finish(status, error)
    except ClaimLostError:
        raise _taken_over(run_id, segment, status) from None


def follow(ranks: Ranks, *, should_stop: Callable[[], bool] = lambda: False) -> RunOutcome:
    """A rank other than 0 under torchrun: train on what rank 0 launched, record nothing.

    Raises LeaderFailed when rank 0 failed before training (it reports why), HlbdError
    when training stopped with an error (a rank died, a collective timed out).
    """
    launch = ranks.await_launch()
    run_id, run_dir = launch["run_id"], Path(launch["run_dir"])
    run = Run(None, run_id=run_id, segment=launch["segment"], run_dir=run_dir,
              resumed_from=_resumed_from(launch["resume"], launch["resume_path"]))
    try:
        result = train(TrainConfig.from_dict(launch["config"]), launch["examples"],
                       Tokenizer(launch["vocab"]), run, held_out=launch["held_out"],
                       resume=launch["resume"],
                       should_stop=should_stop, progress=False, ranks=ranks)
    except TrainingStopped as stop:
        ranks.barrier()
        return RunOutcome(run_id, "interrupted", stop.epoch, run_dir)
    except RuntimeError as exc:  # torch's distributed errors (a peer died, a timeout)
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise HlbdError(f"rank {ranks.rank} of run {run_id} stopped: "
                        f"{type(exc).__name__}: {reason}") from exc
    ranks.barrier()
    return RunOutcome(run_id, "finished", result.last_epoch, run_dir)


def _close(store: Store, run_id: str, segment: int, status: str,
           error: str | None = None) -> None:
    # The last write of the run: like the recorder's, it waits out another process's lock.
    if not wait_out_locks(store.finish_run, run_id, segment, status, error):
        raise _taken_over(run_id, segment, status)


def _taken_over(run_id: str, segment: int, status: str) -> RunFailed:
    return RunFailed(f"run {run_id} was taken over by a later segment while segment "
                     f"{segment} ran; this process stopped ({status}) without changing "
                     "the run's status")


def resume_run(store: Store, run_id: str, *, epochs: int | None = None,
               overrides: dict | None = None, force: bool = False,
               ranks: Ranks | None = None, **kwargs) -> RunOutcome:
    """Continue run ``run_id`` (an id or unique prefix) from its newest checkpoint.

    ``epochs`` is the new total; ``overrides`` may set the fields in RESUME_SETTABLE. A
    checkpoint that does not load (missing, truncated, foreign) is named in a warning
    and the next newest one is used; with none left the run starts again from epoch 0
    in the same history (the config and seed determine that state exactly).
    """
    run = store.get_run(run_id)
    _refuse_if_live(run, force)
    ranks = ranks or Ranks()
    plan = None
    for candidate in store.checkpoint_candidates(run["run_id"]):
        try:
            plan = _plan_resume(run, _load_own_checkpoint(run, candidate),
                                candidate["path"], epochs, overrides or {}, ranks)
            break
        except CheckpointError as unusable:
            log.warning("cannot resume from it: %s", unusable)
    if plan is None:
        plan = _plan_restart(run, epochs, overrides or {}, ranks)
    return _resume(store, run, plan, ranks, force=force, **kwargs)


def _load_own_checkpoint(run: dict, candidate: dict) -> dict:
    """The checkpoint file the store lists for ``run``, if it is that run's, at that epoch."""
    state = load_checkpoint(candidate["path"])
    # An imported run's first resume point is the older tool's file, which has no run id.
    belongs = state["run_id"] == run["run_id"] or (
        state["run_id"] is None and run["source"] == "imported")
    if not belongs or state["epoch"] != candidate["epoch"]:
        raise CheckpointError(
            f"{candidate['path']}: holds epoch {state['epoch']} of run {state['run_id']}, "
            f"but the store lists it as epoch {candidate['epoch']} of run {run['run_id']}")
    return state


def _plan_restart(run: dict, epochs: int | None, overrides: dict,
                  ranks: Ranks) -> _ResumePlan:
    """A resume from epoch 0, for a run none of whose checkpoints loads (or that died
    before its first): its recorded config, datasets and vocabulary, checked."""
    config_values = run.get("config") or {}
    if run.get("source") != "hlbd" or not config_values.get("datasets"):
        raise CheckpointError(f"run {run['run_id']} has no checkpoint to resume from, and "
                              "no hlbd training config to start it again from; start a "
                              "new run with `hlbd train`")
    config = TrainConfig.from_dict(config_values)
    for key, value in {**overrides, **({"epochs": epochs} if epochs else {})}.items():
        if key in RESUME_SETTABLE:
            setattr(config, key, value)
    _set_processes(config, ranks)
    check_config(config)
    data = prepare_data(config)
    _check_same_datasets(run, data)
    tokenizer = Tokenizer.build(data.texts())
    if run.get("vocab") and tokenizer.vocab != run["vocab"]:
        raise HlbdError(f"the vocabulary of run {run['run_id']}'s datasets changed since it "
                        "started; starting it again would not continue the same run")
    examples, held_out = data.encode(tokenizer, config)
    log.warning("run %s has no checkpoint that loads: starting it again from epoch 0 in the "
                "same history (its recorded epochs become superseded)", run["run_id"])
    return _ResumePlan(None, None, config, data, tokenizer, examples, held_out)


def resume_checkpoint(store: Store, path: str | Path, *, epochs: int | None = None,
                      overrides: dict | None = None, force: bool = False,
                      name: str | None = None, runs_root: Path | None = None,
                      ranks: Ranks | None = None, **kwargs) -> RunOutcome:
    """Continue from a checkpoint file; the run id comes from the checkpoint.

    A checkpoint of the older tool (no run id) starts a new run, marked imported, whose
    history up to the checkpoint is the lists inside it; ``name`` names that run.
    """
    state = load_checkpoint(path)
    run = None
    if state["run_id"] is not None:
        try:
            run = store.get_run(state["run_id"])
        except UnknownRunError:
            raise UnknownRunError(f"{path}: belongs to run {state['run_id']}, which is not "
                                  f"in {store.url}; pass the --db it was recorded in") from None
        _refuse_if_live(run, force)
        if superseded(store.segments(run["run_id"]), state.get("segment", 1), state["epoch"]):
            raise CheckpointError(
                f"{path}: epoch {state['epoch']} of segment {state.get('segment', 1)} of run "
                f"{run['run_id']} was superseded by a later resume; continuing it would mix "
                "two segments in one history (`hlbd resume` picks the newest current one)")
    ranks = ranks or Ranks()
    plan = _plan_resume(run, state, str(path), epochs, overrides or {}, ranks)
    # Recorded absolute, as checkpoint rows are: a later resume or pruning, from another
    # working directory, must find (or recognise) the same file.
    plan.path = os.path.abspath(path)
    if run is None:  # the imported run is created only if no stop was asked for
        _stop_if_asked(kwargs.get("should_stop", lambda: False), "run")
        run = _import_checkpoint_run(store, plan, name, runs_root or runs_dir())
        return _resume(store, run, plan, ranks, force=force, stop_checked=True, **kwargs)
    return _resume(store, run, plan, ranks, force=force, **kwargs)


def _refuse_if_live(run: dict, force: bool) -> None:
    if run["display_status"] == "running" and not force:
        raise HlbdError(still_being_written(run["run_id"], run.get("pid"), run.get("hostname")))


@dataclass
class _ResumePlan:
    """A checked resume: nothing has been written yet."""

    state: dict | None  # None: from epoch 0
    path: str | None
    config: TrainConfig
    data: PreparedData
    tokenizer: Tokenizer
    examples: Examples
    held_out: HeldOut | None

    @property
    def start_epoch(self) -> int:
        return self.state["epoch"] if self.state is not None else 0


def _plan_resume(run: dict | None, state: dict, path: str, epochs: int | None,
                 overrides: dict, ranks: Ranks) -> _ResumePlan:
    """Check everything a resume needs, reading only; raises on the first problem."""
    config = TrainConfig.from_dict(state["config"])
    trained_on = config.world_size
    if epochs is None and run is not None:
        epochs = run["config"].get("epochs")  # the total as last set, by a resume too
    if epochs is not None:
        overrides = {**overrides, "epochs": epochs}
    contradictions = [f"--{k.replace('_', '-')} {v} (checkpoint: {getattr(config, k)})"
                      for k, v in overrides.items()
                      if k not in RESUME_SETTABLE and v != getattr(config, k)]
    if contradictions:
        raise CheckpointError(f"{path}: flags contradict the checkpoint's config: "
                              f"{'; '.join(contradictions)}; a resume continues the same "
                              "run, start a new one to change them")
    for key in RESUME_SETTABLE:
        if key in overrides:
            setattr(config, key, overrides[key])
    _set_processes(config, ranks)
    config.validate()
    if config.epochs <= state["epoch"]:
        raise HlbdError(f"{path} is at epoch {state['epoch']} and the run's total is "
                        f"{config.epochs}; pass --epochs N with N > {state['epoch']} as the "
                        "new total")
    check_device(config.device)
    tokenizer = check_resumable(config, state, path)
    data = prepare_data(config)
    if run is not None:
        _check_same_datasets(run, data)
    examples, held_out = data.encode(tokenizer, config)
    if trained_on != config.world_size:
        # The global batch is the same, so the run goes on as one process would; only the
        # float summation order (and, with dropout, the masks of ranks > 0) differ.
        log.warning("%s was written by %d process(es); continuing on %d: the same global "
                    "batch, equal to float tolerance, not bit for bit", path, trained_on,
                    config.world_size)
    return _ResumePlan(state, path, config, data, tokenizer, examples, held_out)


def _check_same_datasets(run: dict, data: PreparedData) -> None:
    if run.get("source") == "hlbd" and data.dataset_stats != run["dataset_stats"]:
        raise HlbdError(f"the datasets of run {run['run_id']} changed since it started "
                        f"(now {data.dataset_stats}, then {run['dataset_stats']}); resuming "
                        "would not continue the same run")


def _resume(store: Store, run: dict, plan: _ResumePlan, ranks: Ranks, *,
            force: bool = False,
            on_run_id: Callable[[str], None] = lambda _id: None,
            should_stop: Callable[[], bool] = lambda: False,
            progress: bool = True, stop_checked: bool = False) -> RunOutcome:
    run_id = run["run_id"]
    if not stop_checked:
        _stop_if_asked(should_stop, "resume")
    # The claim: atomic in the database, so of several resumes started at once exactly
    # one gets here; the others raise RunClaimedError having written nothing.
    segment = _when_unlocked(should_stop, "resume", functools.partial(
        store.begin_segment, run_id, plan.start_epoch, resumed_from=plan.path,
        config=plan.config.to_dict(), hosts=ranks.hosts, force=force))
    run_dir = Path(run["run_dir"]) if run.get("run_dir") else runs_dir() / run_id
    return _run(plan.config, store, run_id, segment, run_dir, plan.examples, plan.tokenizer,
                plan.data.dataset_stats, plan.state, should_stop, progress, on_run_id,
                ranks, resume_path=plan.path, held_out=plan.held_out)


def _import_checkpoint_run(store: Store, plan: _ResumePlan, name: str | None,
                           runs_root: Path) -> dict:
    """A new run, marked imported, holding an older tool's checkpoint history (one write)."""
    history, epoch = plan.state["history"], plan.state["epoch"]
    lists = {field: list(history.get(key) or [])[:epoch] for field, key in EPOCH_LISTS.items()}
    rows = [{"epoch": i + 1, **{f: values[i] if i < len(values) else None
                                for f, values in lists.items()}}
            for i in range(max(map(len, lists.values())))]
    run_id = uuid.uuid4().hex
    store.create_run(name or plan.config.name or "imported", plan.config.to_dict(),
                     plan.data.dataset_stats, vocab=plan.tokenizer.vocab,
                     run_dir=str(runs_root / run_id), source="imported",
                     extra={"imported_from": plan.path}, run_id=run_id,
                     status="interrupted", epochs=rows)
    return store.get_run(run_id)
