"""Record any PyTorch loop: ``hlbd.init()`` returns a ``Run``.

    with hlbd.init(name="gru-baseline", config={...}) as run:
        run.watch(optimizer)
        for epoch ...:
            for batch ...:
                loss.backward()
                run.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step(); optimizer.zero_grad()
                run.log({"loss": loss.detach(), "acc": acc})
            scheduler.step()
            run.end_epoch({"val_loss": val})
            torch.save(state, path); run.checkpoint(path)

Where each number comes from:

- ``watch(optimizer)``: hooks on ``optimizer.step`` (torch's step pre- and post-hooks,
  no patching). Before a step runs, each parameter group's ``lr`` is read: the LR that
  step uses (``lr`` for group 0, ``lr/1``, ``lr/2`` ... for the others); once it has run
  it is counted. A step ``torch.amp.GradScaler`` skipped (inf or NaN gradients) never
  calls ``optimizer.step``: it is not counted, and the next step records how many were
  skipped before it (``skipped``) and the epoch row counts them.
- ``clip_grad_norm_``: torch's own; what it returns (the total norm before clipping) is
  the ``grad_norm`` of the step about to happen, and ``clipped`` says whether it clipped.
- ``log``: any names, ints, floats or 0-dim tensors on any device. A tensor is copied
  on its device and read on the recording thread, in one transfer per device per flush:
  no host sync on the loop's thread.

``loss``, ``grad_norm`` and ``lr`` go into ``steps`` (the series ``hlbd train``
records, which the explorer, the anomaly rules and ``step_metrics`` read); every other
name into ``points``; the view ``metric_points`` has them all. The writes run in the
recorder's thread, in order (hlbd.recorder.StoreRecorder), as ``hlbd train``'s do.

Under torchrun only rank 0 records; on the other ranks every method works and records
nothing.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import numbers
import os
import signal
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

import torch

from hlbd import system
from hlbd.errors import ClaimLostError, HlbdError, UnknownRunError
from hlbd.recorder import StoreRecorder, wait_out_locks
from hlbd.store import Store
from hlbd.store.claims import still_being_written
from hlbd.store.rows import STEP_SERIES
from hlbd.store.writes import checked_tags

# Steps kept in memory before they go to the recording thread (hlbd train's
# --step-flush-interval default): one transfer per device and one transaction per flush.
FLUSH_STEPS = 500
RESUME_MODES = (None, "must", "allow")
MAX_KEY = 200  # points.key
DEFAULT_RUNS_DIR = "hlbd_runs"
# How long finish() waits for the other ranks under a process group.
FINISH_WAIT_SECONDS = 120
log = logging.getLogger(__name__)


def runs_dir(value: str | None = None) -> Path:
    """Where run folders go: ``value`` (a flag), else ``HLBD_RUNS_DIR``, else
    ``./hlbd_runs``."""
    return Path(value or os.environ.get("HLBD_RUNS_DIR") or DEFAULT_RUNS_DIR).resolve()


@dataclass(frozen=True)
class ResumedFrom:
    """The checkpoint a resumed run continues from: load ``path`` in the loop."""

    path: str
    epoch: int
    step: int


def init(name: str | None = None, config: Mapping[str, Any] | None = None, *,
         db: str | None = None, runs_dir: str | None = None, run_id: str | None = None,
         resume: str | None = None, tags: Iterable[str] | None = None) -> Run:
    """Start recording a run (or continue one); returns its ``Run``.

    ``db``: a path or SQLAlchemy URL (else ``HLBD_DB``, else ``./hlbd.db``). ``resume``:
    None, a new run (an existing ``run_id`` is an error); "must", continue ``run_id``
    from its newest recorded checkpoint (an unknown id, or a run still being written,
    is an error); "allow", either.
    """
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be None, 'must' or 'allow', not {resume!r}")
    if resume == "must" and not run_id:
        raise ValueError("resume='must' needs the run_id of the run to continue")
    run = _start(name, config, db, runs_dir, run_id, resume, tags)
    global _hooked
    if not _hooked:
        _hooked = True
        end_with_the_process(_end_left_open)
    _LEFT_OPEN.add(run)
    return run


# The runs init() opened that are not finished yet (weakly: a run nobody holds is gone),
# ended with the process; the hooks are installed the first time one is open, and
# stay (they do nothing with none open).
_LEFT_OPEN: weakref.WeakSet[Run] = weakref.WeakSet()
_hooked = False


def _end_left_open(kind, exc, tb) -> None:
    for run in list(_LEFT_OPEN):
        run._ended_by(kind, exc, tb)


def end_with_the_process(ended_by: Callable[[Any, Any, Any], None]) -> None:
    """Call ``ended_by(kind, exc, tb)`` when an exception ends the process (before it
    is printed), and ``ended_by(None, None, None)`` at exit: a run left open ends with
    the process, as wandb's does. A killed process (SIGKILL, SIGTERM without a
    handler) runs neither: its run turns crashed, then stale, by the heartbeat."""
    previous = sys.excepthook

    def hook(kind, exc, tb):
        try:
            ended_by(kind, exc, tb)
        except Exception:  # noqa: BLE001 - the record's failure must not hide the exception
            traceback.print_exc()
        previous(kind, exc, tb)

    sys.excepthook = hook
    atexit.register(ended_by, None, None, None)


def _start(name, config, db, runs_dir, run_id, resume, tags, at: int | None = None,
           extra: dict | None = None) -> Run:
    """init's work, for the integrations too. ``at``: continue from the checkpoint
    recorded at this step (the one a framework resumes from, wherever its file lies
    now), not the newest; ``extra``: more of the run's ``extra`` (which integration
    records it)."""
    config = _checked_config(config)
    tags = checked_tags([str(t) for t in (tags or [])])  # before the store is opened
    shared = _process_group()
    rank = shared.get_rank() if shared else int(os.environ.get("RANK", "0") or 0)
    if rank != 0:
        # Rank 0 alone opens the store; with a process group this rank learns the run
        # from it (id, segment, where it resumes), else it knows nothing of the run.
        told = _from_rank_0(shared, None) if shared else {}
        return Run(None, config=config, group=shared, **told)
    run = None
    try:
        run = _open_run(name, config, db, runs_dir, run_id, resume, tags, at, extra)
        run._group = shared
    finally:
        if shared:
            _from_rank_0(shared, run)
    return run


def _open_run(name, config, db, runs_dir, run_id, resume, tags, at=None, extra=None) -> Run:
    store = Store.open(db)
    try:
        existing = _existing(store, run_id)
        if existing is not None and resume is None:
            raise HlbdError(f"run {existing['run_id']} already exists: pass resume='must' "
                            "(or 'allow') to continue it")
        if existing is None and resume == "must":
            raise HlbdError(f"no run {run_id} in {store.url}: nothing to resume")
        if existing is None:
            return _new_run(store, name, config, runs_dir, run_id, tags, extra)
        return _continued_run(store, existing, config, at)
    except BaseException:
        store.close()
        raise


def _process_group():
    """torch.distributed when a process group of more than one process is running."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _from_rank_0(dist, run: Run | None) -> dict:
    """Rank 0 sends what the other ranks need of its ``run`` (None on rank 0: it did not
    start, and every rank raises); the others get it as Run's keyword arguments."""
    told = [None]
    if dist.get_rank() == 0:
        told = [None if run is None else {
            "run_id": run.id, "segment": run.segment, "run_dir": run.dir,
            "resumed_from": run.resumed_from}]
    dist.broadcast_object_list(told, src=0)
    if told[0] is None and dist.get_rank() != 0:
        raise HlbdError("rank 0 could not start the run (its error says why)")
    return told[0]


def _checked_config(config: Mapping[str, Any] | None) -> dict:
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, not {type(config).__name__}")
    config = dict(config)
    for key, value in config.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ValueError(f"config[{key!r}] is a {type(value).__name__}, which JSON "
                             "cannot hold: pass numbers, strings, lists or dicts") from None
    return config


def _existing(store: Store, run_id: str | None) -> dict | None:
    if not run_id:
        return None
    if not all(c in "0123456789abcdef" for c in run_id) or len(run_id) != 32:
        raise ValueError(f"run_id must be 32 lowercase hex digits (uuid4().hex), "
                         f"not {run_id!r}")
    try:  # that run alone: list_runs() would aggregate every run's epochs
        run = store.get_run(run_id)
    except UnknownRunError:
        return None
    return run if run["run_id"] == run_id else None  # get_run takes a prefix too


def _new_run(store, name, config, runs_root, run_id, tags, extra=None) -> Run:
    run_id = run_id or uuid.uuid4().hex
    run_dir = runs_dir(runs_root) / run_id
    store.create_run(name or "run", config, {}, run_dir=str(run_dir), run_id=run_id,
                     extra={**(extra or {}), "recorded_by": "hlbd.Run"}, tags=tags)
    return Run(store, run_id=run_id, segment=1, run_dir=run_dir, config=config)


def _continued_run(store, run: dict, config: dict, at: int | None = None) -> Run:
    if run["display_status"] == "running":
        raise HlbdError(still_being_written(run["run_id"], run.get("pid"),
                                            run.get("hostname")))
    candidates = store.checkpoint_candidates(run["run_id"])
    if at is None:  # the newest whose file is still there
        candidates = [c for c in candidates if Path(c["path"]).exists()]
    else:  # the one a framework loaded, wherever it lies now
        candidates = [c for c in candidates if c["step"] == at]
        if not candidates:
            raise HlbdError(f"the checkpoint at step {at} is not one of run "
                            f"{run['run_id']}'s on its history (not recorded, superseded "
                            "by a later resume, or gone)")
    newest = next(iter(candidates), None)
    epoch = newest["epoch"] if newest else 0
    resumed, start_step, partial = None, None, None
    if newest is not None:
        step = start_step = newest["step"]
        if step is None:  # a file a segment started from: the steps of its epochs
            step = max((s["step"] for s in store.steps(run["run_id"])
                        if s["epoch"] <= epoch), default=0)
        resumed = ResumedFrom(newest["path"], epoch, step)
        if start_step is not None:  # taken mid-epoch: what the open epoch has so far
            partial = _OpenEpoch.read(store, run["run_id"], epoch + 1, step)
    segment = store.begin_segment(run["run_id"], epoch,
                                  resumed_from=resumed.path if resumed else None,
                                  config=config or run["config"], start_step=start_step)
    return Run(store, run_id=run["run_id"], segment=segment,
               run_dir=Path(run["run_dir"]) if run.get("run_dir") else None,
               config=config or run["config"], resumed_from=resumed, open_epoch=partial)


@dataclass
class _OpenEpoch:
    """The steps a mid-epoch checkpoint's epoch had recorded up to it: a resumed run's
    epoch row is of the whole epoch, before and after the checkpoint."""

    steps: list[dict]
    clipped: int
    skipped: int

    @classmethod
    def read(cls, store: Store, run_id: str, epoch: int, step: int) -> _OpenEpoch:
        steps = [s for s in store.steps(run_id, epochs=[epoch]) if s["step"] <= step]
        def total(key: str) -> int:
            return sum(int(p["value"]) for p in store.points(run_id, key)
                       if p["scope"] == "step" and p["epoch"] == epoch
                       and p["step"] <= step and p["value"] == p["value"])

        return cls(steps, total("clipped"), total("skipped"))


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived inside ``with hlbd.init(...)``: the run ends ``interrupted``."""


def _terminated(signum, frame) -> None:
    raise Terminated("SIGTERM")


class Run:
    """One recorded run: see the module docstring. ``store`` None records nothing (the
    ranks other than 0 under torchrun)."""

    def __init__(self, store: Store | None = None, *, run_id: str | None = None,
                 segment: int = 1,
                 run_dir: Path | None = None, config: dict | None = None,
                 resumed_from: ResumedFrom | None = None,
                 open_epoch: _OpenEpoch | None = None, group: Any = None,
                 dataset_stats: dict | None = None, schedule: dict | None = None,
                 flush_steps: int | None = None, owns_store: bool = True):
        """``group``: torch.distributed when the run was opened under a process group
        (every rank waits for the others in ``finish``). For ``hlbd train`` (hlbd.runner):
        ``dataset_stats`` for the report, ``schedule`` the config whose LR schedule the
        anomaly rules expect (a loop's own config does not say which scheduler it steps,
        so by default the rule is not applied), ``flush_steps`` how many steps wait in
        memory before they go to the recording thread, ``owns_store`` whether finish()
        closes ``store``."""
        self.id = run_id
        self.segment = segment
        self.config = config or {}
        self.resumed_from = resumed_from
        self.step = resumed_from.step if resumed_from else 0
        self.epoch = resumed_from.epoch if resumed_from else 0
        self._store = store
        self._recorder = None
        self._group = group
        self._flush_steps = flush_steps or FLUSH_STEPS
        self._owns_store = owns_store
        self.dir = run_dir  # the run's folder (its report; a place for checkpoints)
        if store is not None:
            run_dir = self.dir = run_dir or runs_dir() / run_id
            run_dir.mkdir(parents=True, exist_ok=True)
            self._recorder = StoreRecorder(store, run_id, segment, run_dir,
                                           dataset_stats or {}, schedule or {})
        self._closed_at = {self.epoch: self.step}  # epoch -> the step it closed on
        self._system_device: torch.device | None = None  # watch(system=True)
        self._watched = False
        self._hooks: list = []
        self._closed_step = self.step  # values for steps <= this went to the recorder
        self._open: dict[int, dict[str, Any]] = {}  # step -> key -> value, not yet sent
        self._clip_pending: int | None = None  # the step a measured grad norm is for
        self._skipped = 0  # steps skipped since the last real one
        self._epoch_skipped = 0
        self._epoch_clipped = 0
        self._finished = False
        self._epoch_started = time.perf_counter()
        self._sigterm_installed = False
        self._totals = _EpochTotals()
        if open_epoch is not None:
            self._totals.seed(open_epoch.steps, open_epoch.clipped)
            self._epoch_skipped = open_epoch.skipped
        self._good_keys: set[str] = set()  # names already checked
        self._attempt: dict[str, Any] = {}  # logged after a step GradScaler skipped
        self._attempts: dict[tuple, tuple] = {}  # skipped attempts' points, not yet sent

    # -- what the loop calls ------------------------------------------------------------

    def watch(self, optimizer: torch.optim.Optimizer, scheduler: Any = None, *,
              system: bool = False) -> None:
        """Record every real step of ``optimizer``: each group's LR as the step used it,
        and count it. ``scheduler`` is accepted for symmetry: the LR is read from the
        optimizer, where the scheduler put it, at the moment the step runs. ``system``:
        as each epoch closes, also the process's memory and CPU time and the CUDA
        device's memory and utilisation (hlbd.system; under a process group every rank's,
        so then call end_epoch on every rank)."""
        if self._watched:
            raise ValueError("watch() was already called for this run")
        self._watched = True
        if system:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self._system_device = params[0].device if params else torch.device("cpu")
        self._hooks = [optimizer.register_step_pre_hook(self._before_step),
                       optimizer.register_step_post_hook(self._after_step)]

    def clip_grad_norm_(self, parameters, max_norm: float, norm_type: float = 2.0,
                        **kwargs) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_``, its result returned unchanged; records it
        as ``grad_norm`` (before clipping) and ``clipped`` for the step about to happen."""
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type, **kwargs)
        self._measured(norm.detach().clone(), max_norm)
        return norm

    # -- for the integrations (hlbd.integrations), which get the numbers from a framework

    def _measured(self, norm: torch.Tensor | float, max_norm: float | None) -> None:
        """The norm of the step about to happen, measured before clipping; measured
        again before any step ran, the last attempt was skipped (GradScaler)."""
        step = self.step + 1
        if self._watched and self._clip_pending == step:
            self._set_aside_skipped()
        self._clip_pending = step
        self._norm_of(step, norm, max_norm)

    def _norm_of(self, step: int, norm: torch.Tensor | float,
                 max_norm: float | None) -> None:
        """``norm``, measured before clipping to ``max_norm``, is step ``step``'s (None:
        clipped by another rule, ``clipped`` not recorded)."""
        values = self._values(step)
        values["grad_norm"] = norm
        if max_norm is not None:
            values["clipped"] = _ClipLimit(max_norm)  # compared with the norm on the host

    def _skipped_attempt(self, values: Mapping[str, Any]) -> None:
        """An optimizer step the framework attempted and skipped (an AMP overflow):
        ``values`` are that attempt's (scope 'skipped', at the step it was to be), and it
        is counted as skipped, not as a step."""
        checked = self._checked(values)
        step, epoch = self.step + 1, self.epoch + 1
        for key, value in checked.items():
            self._attempts[key, step] = (key, "skipped", step, epoch, value)
        self._skipped += 1
        self._epoch_skipped += 1

    def _log_skipped(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Values of the attempt at step ``step`` that GradScaler skipped, known only
        later (hlbd train reduces its losses over ranks once per flush): kept as that
        attempt's (scope 'skipped'), as log() keeps values logged right after it."""
        epoch = self.epoch + 1
        for key, value in self._checked(metrics).items():
            self._attempts[key, step] = (key, "skipped", step, epoch, value)

    def log(self, metrics: Mapping[str, Any], *, step: int | None = None) -> None:
        """Record ``metrics`` at ``step`` (default: ``run.step``, the optimizer steps so
        far; without ``watch()`` a call counter). ValueError, naming the key, for a
        value that is not a number or a 0-dim tensor, or a step before one already
        recorded; nothing of the call is recorded then."""
        if not isinstance(metrics, Mapping):
            raise ValueError(  # noqa: TRY004 - the API's contract: bad input is a ValueError
                f"log() takes a dict of values, not {type(metrics).__name__}")
        checked = self._checked(metrics)
        if step is None and self._watched and self._clip_pending == self.step + 1:
            # After a step GradScaler skipped: the attempt's values, not a step's.
            self._attempt.update(checked)
            return
        if step is None:
            step = self.step if self._watched else self.step + 1
        elif not isinstance(step, numbers.Integral) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative int, not {step!r}")
        step = int(step)
        if step == 0 and self._watched:
            raise ValueError("no optimizer step has run yet: with watch(), log after "
                             "optimizer.step() (steps count from 1)")
        if step <= self._closed_step and step not in self._open:
            raise ValueError(f"step {step}: the record of this segment has closed every "
                             f"step up to {self._closed_step} (steps only go forward; an "
                             "epoch's steps close with end_epoch())")
        values = self._open.get(step, {})
        for key in checked:
            if key in values and _is_hlbds(key, self._watched):
                raise ValueError(f"{key!r} is recorded by hlbd itself (watch() records "
                                 "each group's LR as the step used it, clip_grad_norm_ "
                                 "the norm before clipping); log yours under another name")
            if key in values:
                raise ValueError(f"{key!r} was already recorded at step {step}: one value "
                                 "per name and step (log after optimizer.step(), or pass "
                                 "step=)")
        self._values(step).update(checked)
        if not self._watched:
            self.step = max(self.step, step)
            self._steps_may_close()

    def end_epoch(self, metrics: Mapping[str, Any] | None = None, *,
                  loss: Any = None, tokens: int | None = None, token_accuracy: Any = None,
                  wall_seconds: float | None = None) -> None:
        """Close the epoch: its row gets the mean loss, the grad norm's mean, min and max
        over finite steps, the non-finite, clipped and skipped counts and the last LR of
        its steps, and ``metrics`` as epoch values at the step it closed on.

        What only the loop knows goes into the row's own columns: ``loss`` the epoch's
        loss as the loop computes it (say, weighted by tokens; default: the mean of its
        steps' ``loss``), ``tokens`` trained on (and so ``tokens_per_second``),
        ``token_accuracy``, ``wall_seconds`` its training time (default: since the
        previous ``end_epoch``, evaluation and checkpointing included)."""
        metrics = dict(metrics or {})
        if self._system_device is not None:
            metrics.update(self._system_values())
        checked = self._checked(metrics)
        columns = self._checked({key: value for key, value in (
            ("loss", loss), ("tokens", tokens), ("token_accuracy", token_accuracy),
            ("wall_seconds", wall_seconds)) if value is not None})
        self.epoch += 1
        current = self.step
        self._closed_at[self.epoch] = current
        self._drop_unstepped()
        steps = self._take(lambda step: step <= current)
        epoch, skipped = self.epoch, self._epoch_skipped
        self._epoch_skipped = 0
        now = time.perf_counter()
        wall, self._epoch_started = now - self._epoch_started, now
        points = [(key, "epoch", current, epoch, value) for key, value in checked.items()]
        self._flush(steps, points, _Close(epoch, skipped, wall, columns))

    def _system_values(self) -> dict[str, float]:
        """hlbd.system's sample of this process (of every rank, under a process group)."""
        sample = system.sample(self._system_device)
        if self._group is None:
            return system.named([sample])
        samples = [None] * self._group.get_world_size()
        self._group.all_gather_object(samples, sample)
        return system.named(samples)

    def checkpoint(self, path: str | os.PathLike, *, keep: int = 0,
                   step: int | None = None) -> None:
        """Record a checkpoint file the loop wrote, after ``end_epoch`` or after any
        optimizer step: a resume with ``resume='must'`` offers it as
        ``run.resumed_from``. The values of steps up to ``run.step`` are recorded
        first (log nothing more for them). ``step``: the step whose state the file
        holds, when the loop saved a state it kept from earlier (an epoch's end, after
        a stop mid-epoch); default ``run.step``. ``keep`` N > 0 deletes this run's
        older checkpoint files beyond the newest N once this one is recorded."""
        path = Path(path)
        if path.is_dir():  # a framework's checkpoint folder
            if keep:
                raise ValueError(f"{path}: keep= prunes checkpoint files, not folders (the "
                                 "framework's own rotation, save_total_limit, prunes these)")
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            size = path.stat().st_size
        else:
            raise ValueError(f"{path}: no such checkpoint file (write it, then record it)")
        current = self.step
        held, epoch = current, self.epoch
        if step is not None:
            closed = [e for e, at in self._closed_at.items() if at == step]
            if step != current and not closed:
                raise ValueError(f"step {step}: a checkpoint holds the state at run.step "
                                 f"({current}) or at the end of an epoch this run closed "
                                 f"({sorted(self._closed_at.values())})")
            held, epoch = step, max(closed) if step != current else epoch
        self._flush(self._take(lambda s: s <= current))
        if self._recorder is not None:
            self._recorder.keep_checkpoints = keep
            self._recorder.on_checkpoint(epoch, path.resolve(), size, step=held)

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """End the run (idempotent): everything logged is written, then its status."""
        if self._finished:
            return
        self._finished = True
        for hook in self._hooks:
            hook.remove()
        try:
            if self._recorder is not None:
                self._end(status, error)
        finally:
            if self._group is not None and status == "finished":
                self._leave_together()

    def _end(self, status: str, error: str | None) -> None:
        """Write what is left, then the status (ClaimLostError, writing nothing, when a
        later segment took the run over: its status is that segment's to set)."""
        taken_over = False
        try:
            self._drop_unstepped()
            self._flush(self._take(lambda step: True))
            self._recorder.close()
        except BaseException as exc:
            status, error = "failed", error or f"recording failed: {exc}"
            raise
        finally:
            try:
                taken_over = not wait_out_locks(self._store.finish_run, self.id,
                                                self.segment, status, error)
            finally:
                if self._owns_store:
                    self._store.close()
        if taken_over:
            raise ClaimLostError(f"run {self.id} was taken over by a later segment while "
                                 f"segment {self.segment} ran; this one ended ({status}) "
                                 "without changing the run's status")

    def _leave_together(self) -> None:
        """Under a process group: every rank waits here until rank 0 has written the
        run's end, so that a rank leaving first (destroy_process_group) cannot abort
        gloo under a rank still writing. A rank that does not come within
        FINISH_WAIT_SECONDS is only warned about: finish never hangs on a dead peer."""
        try:
            self._group.barrier(async_op=True).wait(
                timeout=timedelta(seconds=FINISH_WAIT_SECONDS))
        except RuntimeError as exc:  # a peer gone or late; this rank's record is done
            log.warning("run %s: the other ranks did not reach finish() within %ss (%s)",
                        self.id, FINISH_WAIT_SECONDS, str(exc).splitlines()[0][:200])

    def __enter__(self) -> Self:
        # SIGTERM (a scheduler's pre-emption, `kill`) ends the block as Ctrl-C does, so
        # the run is recorded interrupted; a handler of the loop's own is left alone.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            signal.signal(signal.SIGTERM, _terminated)
            self._sigterm_installed = True
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self._sigterm_installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if kind is None:
            self.finish("finished")
        elif issubclass(kind, Terminated):
            self.finish("interrupted", "SIGTERM")
            os.kill(os.getpid(), signal.SIGTERM)  # ends as SIGTERM ends a process
        elif issubclass(kind, KeyboardInterrupt):
            self.finish("interrupted", "KeyboardInterrupt")
        else:
            text = "".join(traceback.format_exception_only(kind, exc)).strip()
            self.finish("failed", text)

    # -- inside -------------------------------------------------------------------------

    def _ended_by(self, kind, exc, tb) -> None:
        """The process ends (see end_with_the_process) with this run still open: a
        normal exit is finished, an exception what ``with`` would have made of it."""
        if self._finished:
            return
        try:
            if kind is None:
                self.finish("finished")
            else:
                self.__exit__(kind, exc, tb)
        except Exception:  # noqa: BLE001 - at exit: say it, the process ends anyway
            traceback.print_exc()

    def _checked(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """``metrics`` as recorded: floats, and tensors copied on their device (the
        tensors of one call, when they share a device and dtype, in one stack: one copy
        instead of one per value)."""
        checked, tensors = {}, []
        for key, value in metrics.items():
            if key not in self._good_keys:
                self._good_keys.add(_checked_key(key))
            kind = type(value)
            if kind is float:
                checked[key] = value
            elif kind is torch.Tensor and value.dim() == 0 and not value.is_complex():
                tensors.append((key, value))
            else:
                checked[key] = _checked_value(key, value)
        if len(tensors) > 1 and _one_kind(tensors):
            packed = torch.stack([t.detach() if t.requires_grad else t for _, t in tensors])
            checked.update((key, _Packed(packed, i)) for i, (key, _) in enumerate(tensors))
        else:
            checked.update((key, t.detach().clone()) for key, t in tensors)
        return checked

    def _set_aside_skipped(self) -> None:
        """The step measured for (``_clip_pending``) did not run: GradScaler skipped it.
        Its norm and what was logged after it are kept as that attempt's values (scope
        'skipped' at the step it was to be; of several attempts before one step, the
        last), not as a step's; it is counted as skipped."""
        pending = self._clip_pending
        values = self._open.get(pending, {})
        attempt = {"grad_norm": values.pop("grad_norm", None), **self._attempt}
        values.pop("clipped", None)
        if values.keys() <= {"epoch"}:
            self._open.pop(pending, None)
        epoch = self.epoch + 1
        for key, value in attempt.items():
            if value is not None:
                self._attempts[key, pending] = (key, "skipped", pending, epoch, value)
        self._attempt = {}
        self._skipped += 1
        self._epoch_skipped += 1

    def _drop_unstepped(self) -> None:
        """At the end of an epoch or the run: a step measured for that never ran."""
        if self._clip_pending is not None and self._clip_pending > self.step:
            self._set_aside_skipped()
        self._skipped, self._clip_pending = 0, None

    def _flush(self, steps: list, points: list = (), closes: _Close | None = None) -> None:
        """Hand ``steps`` (and the skipped attempts' values so far) to the recorder;
        ``closes``: the epoch they close."""
        points = [*self._attempts.values(), *points]
        self._attempts = {}
        if self._recorder is not None and (steps or points or closes):
            self._recorder.on_logged(_Flush(self._totals, steps, points, closes).on_host,
                                     rows=len(steps) + len(points) + 1)

    def _values(self, step: int) -> dict[str, Any]:
        values = self._open.get(step)
        if values is None:
            values = self._open[step] = {"epoch": self.epoch + 1}
        return values

    def _before_step(self, optimizer, args, kwargs) -> None:
        step = self.step + 1
        values = self._values(step)
        for i, group in enumerate(optimizer.param_groups):
            lr = group["lr"]
            values["lr" if i == 0 else f"lr/{i}"] = (lr.detach().clone()
                                                     if isinstance(lr, torch.Tensor)
                                                     else float(lr))

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.step += 1
        if self._skipped:
            self._values(self.step)["skipped"] = self._skipped
            self._skipped = 0
        self._clip_pending = None
        self._steps_may_close()

    def _steps_may_close(self) -> None:
        """After a step: hand the steps before the current one to the recorder once
        more than ``flush_steps`` wait (the current one may still get values: log after
        optimizer.step()); keep the heartbeat (a run is stale without one for
        STALE_AFTER, however long its flushes take), and raise a failed write's error
        here, so that training stops at the next step."""
        if len(self._open) > self._flush_steps:
            current = self.step
            self._flush(self._take(lambda step: step < current))
        if self._recorder is not None:
            self._recorder.on_alive()

    def _take(self, closed) -> list[tuple[int, dict]]:
        taken = sorted((s, v) for s, v in self._open.items() if closed(s))
        for step, _ in taken:
            del self._open[step]
        if taken:
            self._closed_step = max(self._closed_step, taken[-1][0])
        return taken


def _is_hlbds(key: str, watched: bool) -> bool:
    """Whether hlbd records ``key`` itself at each step: the norm clip_grad_norm_
    measured, and under watch() each group's LR."""
    return key == "grad_norm" or (watched and (key == "lr" or (
        key.startswith("lr/") and key[3:].isdigit())))


def _checked_key(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise ValueError(f"a metric name must be a non-empty str of at most {MAX_KEY} "
                         f"characters, not {key!r}")
    if key in ("epoch", "clipped", "skipped"):
        raise ValueError(f"{key!r} is recorded by hlbd itself; log it under another name")
    return key


def _checked_value(key: str, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise ValueError(f"{key!r}: a tensor of shape {tuple(value.shape)}; log 0-dim "
                             "tensors (a scalar: loss.detach(), or .mean())")
        if value.is_complex():
            raise ValueError(f"{key!r}: a complex tensor is not a number to record")
        return value.detach().clone()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(  # noqa: TRY004 - the API's contract: bad input is a ValueError
            f"{key!r}: {value!r} is not a number (int, float or a 0-dim tensor)")
    return float(value)


class _Flush:
    """Logged steps (and an epoch's close) to be moved to the host on the recording
    thread: every tensor of one device in one transfer. ``totals`` is the run's
    ``_EpochTotals``, which only the recording thread touches (its writes run in order)."""

    def __init__(self, totals: _EpochTotals, steps: list[tuple[int, dict]],
                 points: list[tuple] = (), closes: _Close | None = None):
        self.totals, self.steps, self.points = totals, steps, list(points)
        self.closes = closes

    def on_host(self) -> tuple[list[dict], list[tuple], dict | None]:
        """(steps rows, points, the epoch row or None) with plain floats."""
        held = [v for _, values in self.steps for v in values.values()]
        held += [p[4] for p in self.points]
        if self.closes is not None:
            held += list(self.closes.columns.values())
        host = _to_host(held)

        def value_of(v):
            return host[id(v.tensor)][v.index] if type(v) is _Packed else host.get(id(v), v)

        steps, points = [], []
        for step, values in self.steps:
            epoch = values["epoch"]
            row = {"step": step, "epoch": epoch, **{k: None for k in STEP_SERIES}}
            for key, value in values.items():
                if key == "epoch":
                    continue
                value = value_of(value)
                if key in STEP_SERIES:
                    row[key] = value
                elif key == "clipped":
                    norm = value_of(values["grad_norm"])
                    points.append((key, "step", step, epoch, float(norm > value.max_norm)))
                else:
                    points.append((key, "step", step, epoch, value))
            if any(row[k] is not None for k in STEP_SERIES):
                steps.append(row)
            self.totals.add(row, values.get("clipped"))
        points += [(k, scope, s, e, value_of(v)) for k, scope, s, e, v in self.points]
        if self.closes is None:
            return steps, points, None
        close = self.closes
        columns = {key: value_of(v) for key, v in close.columns.items()}
        return steps, points, self.totals.close(close.epoch, close.skipped, close.wall,
                                                columns)


class _EpochTotals:
    """The open epoch's aggregates, as hlbd train's epoch rows have them (hlbd.trainer):
    mean loss, the grad norm's mean, min and max over finite steps, non-finite, clipped
    and skipped counts, the last LR."""

    def __init__(self) -> None:
        self.steps = self.clipped = self.nonfinite = 0
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.lr: float | None = None
        self.measured_norm = False

    def seed(self, steps: list[dict], clipped: int) -> None:
        """The open epoch's steps recorded before a resume (``clipped`` of them clipped)."""
        for row in steps:
            self.add(row, None)
        self.clipped += clipped

    def add(self, row: dict, limit: _ClipLimit | None) -> None:
        self.steps += 1
        if row["loss"] is not None:
            self.losses.append(row["loss"])
        norm = row["grad_norm"]
        if norm is not None:
            self.measured_norm = True
            if math.isfinite(norm):
                self.norms.append(norm)
                # As hlbd train counts them: the finite norms above the limit.
                self.clipped += limit is not None and norm > limit.max_norm
            else:
                self.nonfinite += 1
        if row["lr"] is not None:
            self.lr = row["lr"]

    def close(self, epoch: int, skipped: int, wall: float, columns: dict) -> dict:
        """The epoch's row; ``columns``: the loop's own loss, tokens, token_accuracy,
        wall_seconds (Run.end_epoch)."""
        wall = columns.get("wall_seconds", wall)
        tokens = columns.get("tokens")
        row = {
            "epoch": epoch,
            "loss": columns.get("loss", sum(self.losses) / len(self.losses)
                                if self.losses else None),
            **{key: value for key, value in norm_summary(self.norms).items()
               if key != "nonfinite_steps"},
            "steps": self.steps,
            "nonfinite_steps": self.nonfinite if self.measured_norm else None,
            "clipped_steps": self.clipped if self.measured_norm else None,
            "skipped_steps": skipped, "lr": self.lr,
            "token_accuracy": columns.get("token_accuracy"), "wall_seconds": wall,
            "tokens": None if tokens is None else int(tokens),
            "tokens_per_second": tokens / wall if tokens is not None and wall > 0 else None,
        }
        self.__init__()
        return row


def norm_summary(norms: Iterable[float]) -> dict[str, Any]:
    """An epoch row's grad-norm columns from its steps' norms: mean, max and min of the
    finite ones (None without any), and how many were not finite."""
    norms = list(norms)
    finite = [n for n in norms if math.isfinite(n)]
    return {"grad_norm": sum(finite) / len(finite) if finite else None,
            "grad_norm_max": max(finite) if finite else None,
            "grad_norm_min": min(finite) if finite else None,
            "nonfinite_steps": len(norms) - len(finite)}


@dataclass(frozen=True)
class _Close:
    """An epoch end_epoch closed: its number, the steps skipped in it, the seconds since
    the previous close, and the row's columns the loop gave (values or tensors)."""

    epoch: int
    skipped: int
    wall: float
    columns: dict


@dataclass(frozen=True)
class _ClipLimit:
    """The max_norm a step's norm was clipped to: ``clipped`` is norm > max_norm."""

    max_norm: float


class _Packed:
    """Value ``index`` of ``tensor``, the stack of one log() call's tensors."""

    __slots__ = ("index", "tensor")

    def __init__(self, tensor: torch.Tensor, index: int):
        self.tensor, self.index = tensor, index


def _one_kind(tensors: list[tuple[str, torch.Tensor]]) -> bool:
    """Whether the tensors share one device and dtype (so one stack holds them)."""
    first = tensors[0][1]
    device, dtype = first.device, first.dtype
    return all(t.dtype == dtype and t.device == device for _, t in tensors[1:])


def _to_host(held: list) -> dict[int, Any]:
    """The values of the tensors among ``held`` (0-dim ones, and the stacks of _Packed
    values) by id(): one copy to the host per device and dtype, float32 becoming the
    same number as a Python float, exactly. A stack's id gives its list of values."""
    groups: dict[tuple, dict[int, torch.Tensor]] = {}
    for v in held:
        t = v.tensor if type(v) is _Packed else v
        if isinstance(t, torch.Tensor):
            groups.setdefault((t.device, t.dtype), {})[id(t)] = t
    values: dict[int, Any] = {}
    for (_, dtype), group in groups.items():
        tensors = list(group.values())
        flat = torch.cat([t.reshape(-1) for t in tensors]).cpu().tolist()
        if dtype == torch.bool or not dtype.is_floating_point:
            flat = [float(v) for v in flat]
        at = 0
        for t in tensors:
            if t.dim() == 0:
                values[id(t)] = flat[at]
                at += 1
            else:
                values[id(t)] = flat[at:at + len(t)]
                at += len(t)
    return values
