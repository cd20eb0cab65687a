"""``transformers.Trainer`` records into hlbd: ``callbacks=[HlbdCallback()]``.

    from hlbd.integrations.transformers import HlbdCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[HlbdCallback(db="runs.db")])

Where each number comes from (transformers 5.x):

- ``loss`` and ``grad_norm``: the Trainer's own, for every optimizer step. The Trainer
  hands them to callbacks only in ``on_log``, and logs only every ``logging_steps``:
  its ``loss`` is then the mean over the steps since the last log, its ``grad_norm`` the
  last step's. So the callback asks it to log every step (``control.should_log`` in
  ``on_step_end``, the supported way for a callback to ask): each log's ``loss`` is
  that step's loss (over its accumulated micro-batches, averaged over processes) and its
  ``grad_norm`` the norm the Trainer's own clipping returned, before clipping. Your
  other reporters get every step too. With ``max_grad_norm`` 0 the Trainer measures
  the norm without clipping, and ``clipped`` is 0.
- ``logging_nan_inf_filter``: the Trainer replaces a NaN or Inf loss by the mean of the
  steps logged before it, by default; the callback turns the filter off, so a NaN loss
  is recorded as NaN (the model's training does not change: the filter is only the log).
- ``lr``, ``lr/1`` ...: read from the optimizer just before each step ran (hlbd.Run's
  ``watch``), each parameter group's; the Trainer's ``learning_rate`` is group 0 only.
- A step the Trainer attempted and the AMP scaler skipped (inf gradients) did not call
  ``optimizer.step``: it is not a step; its loss and norm are kept with scope
  ``skipped``. (The Trainer's ``global_step`` counts it; ``run.step`` does not.)
- ``evaluate()`` results during training: ``eval_loss`` as ``eval/loss`` (and so on); an
  evaluation when an epoch ends gives that epoch's values, one during an epoch step
  values. An ``evaluate()`` after ``train()`` returned is not in the run (it ended).
- ``TrainingArguments`` (``to_dict()``) is the run's config.
- Each checkpoint the Trainer saves is recorded (its folder); the run id and step go into
  it, in the callback's state in ``trainer_state.json`` (``ExportableState``) and in
  ``hlbd_run.json``. ``trainer.train(resume_from_checkpoint=...)`` from such a folder,
  moved or not, continues the same run: the steps recorded after it are kept,
  superseded. A checkpoint hlbd did not record starts a new run.

The run ends ``finished`` when training ends; an exception out of ``trainer.train()``
that ends the process ends it ``failed`` with its text (``interrupted`` for Ctrl-C and
SIGTERM); a later ``train()`` in the same process fails a run that never ended.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hlbd.integrations import json_safe
from hlbd.run import Run, _start, end_with_the_process

log = logging.getLogger(__name__)
RUN_FILE = "hlbd_run.json"  # in each checkpoint folder: which hlbd run, at which step
# Numbers of an evaluate() that are not about the model (the Trainer adds them).
NOT_METRICS = {"epoch", "step"}


class HlbdCallback(TrainerCallback, ExportableState):
    """Record a ``transformers.Trainer`` run in hlbd (see the module docstring).

    The arguments are ``hlbd.init``'s: ``db`` a path or SQLAlchemy URL (else ``HLBD_DB``,
    else ``./hlbd.db``), ``name`` (else the ``run_name`` of the TrainingArguments),
    ``tags``, ``runs_dir``; ``config`` is added to the TrainingArguments as the run's
    config."""

    def __init__(self, name: str | None = None, *, db: str | None = None,
                 runs_dir: str | None = None, tags: list[str] | None = None,
                 config: dict[str, Any] | None = None):
        self.name, self.db, self.runs_dir = name, db, runs_dir
        self.tags, self.config = list(tags or []), dict(config or {})
        self.run: Run | None = None
        self._max_norm = math.inf
        self._step_before = 0
        self._skipped = False
        self._epoch_pending = False
        self._hooked = False

    def state(self) -> dict:
        """What the Trainer saves of this callback in each checkpoint (trainer_state.json):
        the run and step it was at, so a resume from that checkpoint, wherever it was
        moved, continues the same run; ``args`` rebuild this callback if the Trainer
        restores callbacks (``restore_callback_states_from_checkpoint``)."""
        run = self.run
        at = ({"run_id": run.id, "step": run.step, "epoch": run.epoch}
              if run is not None and run.id else {})
        return {"args": {"name": self.name, "db": self.db, "runs_dir": self.runs_dir,
                         "tags": self.tags, "config": self.config},
                "attributes": {"saved_at": at}}

    # -- the Trainer's events ------------------------------------------------------------

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.run is not None and not self.run._finished:
            self.run.finish("failed", "a later train() began before this one ended")
        args.logging_nan_inf_filter = False
        self._max_norm = args.max_grad_norm if args.max_grad_norm else math.inf
        told = _resumed_from(args, state)
        config = {**json_safe(args.to_dict()), **self.config}
        self.run = _start(self.name or _run_name(args), config, self.db, self.runs_dir,
                          told.get("run_id"), "must" if told else None, self.tags,
                          at=told.get("step"), extra={"integration": "transformers.Trainer"})
        self.run.watch(_torch_optimizer(optimizer))
        self._epoch_pending = False
        if not self._hooked:
            self._hooked = True
            end_with_the_process(self._ended_by)
        self.run.__enter__()  # SIGTERM ends training as Ctrl-C does

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._step_before = self.run.step

    def on_optimizer_step(self, args, state, control, **kwargs):
        # The watched optimizer's step hooks count the step when it really ran.
        self._skipped = self.run.step == self._step_before

    def on_step_begin(self, args, state, control, **kwargs):
        self._close_epoch()

    def on_step_end(self, args, state, control, **kwargs):
        control.should_log = True  # the step's own loss and norm: see the docstring

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or self.run is None or self.run._finished:
            return  # an evaluation's log (on_evaluate has it) or the end-of-training summary
        values = {"loss": float(logs["loss"])}
        if self._skipped:
            if "grad_norm" in logs:
                values["grad_norm"] = float(logs["grad_norm"])
            self.run._skipped_attempt(values)
            self._skipped = False
            return
        if "grad_norm" in logs:
            self.run._norm_of(self.run.step, float(logs["grad_norm"]), self._max_norm)
        self.run.log(values)

    def on_epoch_end(self, args, state, control, **kwargs):
        # Closed once what follows the epoch's end (its evaluation) has been seen.
        self._epoch_pending = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.run is None or self.run._finished or not state.is_world_process_zero:
            return
        values = {_eval_key(k): v for k, v in (metrics or {}).items()
                  if k not in NOT_METRICS and _is_number(v)}
        if self._epoch_pending:
            self._close_epoch(values)
            return
        try:
            self.run.log(values)
        except ValueError as refused:  # a second evaluation at one step
            log.warning("hlbd: evaluation at step %s not recorded: %s", self.run.step, refused)

    def on_save(self, args, state, control, **kwargs):
        if self.run is None or self.run._finished:
            return
        self._close_epoch()
        if not state.is_world_process_zero:
            # Rank 0 records; another rank would list the folder while rank 0 writes it
            # (and on another node may not see it at all).
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            log.warning("hlbd: no checkpoint folder %s to record", folder)
            return
        (folder / RUN_FILE).write_text(json.dumps(
            {"run_id": self.run.id, "step": self.run.step, "epoch": self.run.epoch,
             "global_step": state.global_step}))
        self.run.checkpoint(folder)

    def on_train_end(self, args, state, control, **kwargs):
        if self.run is None or self.run._finished:
            return
        self._close_epoch()
        self.run.__exit__(None, None, None)

    # -- inside --------------------------------------------------------------------------

    def _close_epoch(self, values: dict | None = None) -> None:
        if self._epoch_pending:
            self._epoch_pending = False
            self.run.end_epoch(values)

    def _ended_by(self, kind, exc, tb) -> None:
        """The process is ending with an exception (or at exit, kind None) while the
        run is open."""
        if self.run is not None and not self.run._finished:
            if kind is None:
                self.run.finish("interrupted", "the process exited before training ended")
            else:
                self.run.__exit__(kind, exc, tb)


def _resumed_from(args, state) -> dict:
    """The hlbd run and step of the checkpoint this train() resumed from ({} for a new
    run). The Trainer has loaded the checkpoint's trainer_state.json before
    on_train_begin: this callback's saved state is in it, wherever the folder lies;
    checkpoints of an older hlbd have only hlbd_run.json, found by the Trainer's naming."""
    if not state.global_step:
        return {}
    saved = (state.stateful_callbacks or {}).get(HlbdCallback.__name__)
    for entry in saved if isinstance(saved, list) else [saved]:
        at = ((entry or {}).get("attributes") or {}).get("saved_at")
        if at:
            return at
    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
    if (folder / RUN_FILE).is_file():
        return json.loads((folder / RUN_FILE).read_text())
    log.warning("hlbd: training resumes at step %s from a checkpoint hlbd did not record: "
                "recording a new run", state.global_step)
    return {}


def _torch_optimizer(optimizer):
    """The torch optimizer the Trainer steps (accelerate wraps it)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if not hasattr(inner, "register_step_pre_hook"):
        raise TypeError(f"hlbd: the Trainer's optimizer {type(optimizer).__name__} is not "
                        "a torch optimizer; the LR each step used cannot be read")
    return inner


def _run_name(args) -> str | None:
    name = getattr(args, "run_name", None)
    return name if name and name != args.output_dir else None


def _eval_key(key: str) -> str:
    return "eval/" + key[len("eval_"):] if key.startswith("eval_") else key


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

