"""Lightning records into hlbd: ``HlbdLogger`` and its ``callback()``.

    from hlbd.integrations.lightning import HlbdLogger
    logger = HlbdLogger(db="runs.db")
    trainer = L.Trainer(logger=logger, callbacks=[logger.callback()])

Where each number comes from (Lightning 2.x; ``lightning`` or ``pytorch_lightning``):

- ``loss``: what ``training_step`` returned, per optimizer step: with
  ``accumulate_grad_batches`` N, the sum of the step's micro-batch losses as Lightning
  scales them (each divided by N), the loss whose gradient the step took (the mean of a
  full group's); under DDP, the mean of every rank's (one all-reduce per step, on the
  device). Read in the callback's ``on_train_batch_end``: every step, not every
  ``log_every_n_steps``; kept on the device until a flush.
- ``grad_norm``: the total 2-norm of the gradients in ``on_before_optimizer_step``, after
  the AMP unscale and before Lightning clips (``gradient_clip_val``): the number
  ``clip_grad_norm_`` measures and returns. ``clipped``: 1 when it was above
  ``gradient_clip_val`` with the "norm" algorithm (not recorded for "value" clipping).
- ``lr``, ``lr/1`` ...: each parameter group's LR read just before each step ran
  (hlbd.Run's ``watch`` on the trainer's optimizer); a step the AMP scaler skipped is not
  a step, its values kept with scope ``skipped``.
- Whatever the module ``self.log``s reaches ``log_metrics`` at Lightning's intervals, and
  is recorded under its name at that step (a name hlbd records itself, such as
  ``loss``, as ``logged/loss``); what comes as an epoch ends, its validation included
  (``val_loss``), as the epoch's values; ``log_hyperparams`` adds to the run's config.
- A checkpoint Lightning saves carries ``hlbd`` (the run id and step) and is recorded;
  ``trainer.fit(..., ckpt_path=...)`` from it (moved or not) continues the same run, the
  steps recorded after it kept, superseded.
- ``finalize``: "success" ends the run finished; an exception failed, with its text;
  Ctrl-C interrupted.
"""

from __future__ import annotations

import logging
import math
import uuid
from argparse import Namespace
from typing import Any

import torch

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import Logger
except ImportError:  # the older package name
    from pytorch_lightning import Callback
    from pytorch_lightning.loggers import Logger

from hlbd.integrations import json_safe
from hlbd.run import MAX_KEY, Run, _start

log = logging.getLogger(__name__)
OWN_NAMES = {"loss", "grad_norm", "lr", "clipped", "skipped", "epoch"}


class HlbdLogger(Logger):
    """A Lightning logger recording into hlbd; pair it with ``callback()`` for the
    per-step loss, pre-clip norm and LR. The arguments are ``hlbd.init``'s."""

    def __init__(self, name: str | None = None, *, db: str | None = None,
                 runs_dir: str | None = None, tags: list[str] | None = None,
                 config: dict[str, Any] | None = None, run_id: str | None = None):
        super().__init__()
        self._name, self._db, self._runs_dir = name, db, runs_dir
        self._tags, self._config = list(tags or []), dict(config or {})
        self._run_id = run_id or uuid.uuid4().hex
        self._resume_at: int | None = None  # the step of the checkpoint fit(ckpt_path=) loaded
        self._error: BaseException | None = None
        self._callback: HlbdCallback | None = None
        self.run: Run | None = None

    # -- Logger --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name or "hlbd"

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def save_dir(self) -> str | None:
        return self._runs_dir

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args, **kwargs) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params or {})
        self._config.update(json_safe(params))  # before training starts: the config

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is None or self.run._finished:
            return
        values = {}
        for key, value in metrics.items():
            if key == "epoch" or not _is_number(value):
                continue
            values[f"logged/{key}" if key in OWN_NAMES else key[:MAX_KEY]] = value
        if not values:
            return
        pending = self._callback._epoch_pending if self._callback else False
        if pending:  # the epoch has ended: its values
            self._callback._epoch_values.update(values)
            return
        try:
            self.run.log(values)
        except ValueError as refused:
            log.warning("hlbd: not recorded at step %s: %s", self.run.step, refused)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        path = getattr(checkpoint_callback, "_last_checkpoint_saved", None)
        if self.run is None or self.run._finished or not path:
            return
        if self._callback is not None and self._callback._epoch_pending:
            # Saved as the epoch ended, before Lightning logs the epoch's values: recorded
            # once the epoch is closed with them.
            self._callback._checkpoints.append(path)
            return
        self.run.checkpoint(path)

    def finalize(self, status: str) -> None:
        if self.run is None or self.run._finished:
            return
        if self._callback is not None:
            self._callback._close_epoch()
        if status == "success":
            self.run.finish("finished")
        elif isinstance(self._error, KeyboardInterrupt):
            self.run.finish("interrupted", "KeyboardInterrupt")
        else:
            error = self._error
            text = f"{type(error).__name__}: {error}" if error is not None else status
            self.run.finish("failed", text)

    def callback(self) -> HlbdCallback:
        """The callback that records each optimizer step (pass it in ``callbacks``)."""
        if self._callback is None:
            self._callback = HlbdCallback(self)
        return self._callback

    # -- opened by the callback when training starts (every rank calls it) -------------

    def _open(self, trainer) -> None:
        told = self._resume_at is not None
        config = {**self._config, "lightning": _trainer_settings(trainer)}
        self.run = _start(self._name, config, self._db, self._runs_dir, self._run_id,
                          "must" if told else None, self._tags, at=self._resume_at,
                          extra={"integration": "lightning"})


class HlbdCallback(Callback):
    """HlbdLogger's callback: the per-step loss, pre-clip norm and LR (HlbdLogger.callback)."""

    def __init__(self, logger: HlbdLogger):
        self.logger = logger
        self._losses: list[torch.Tensor] = []
        self._epoch_pending = False
        self._last_batch_done = False  # the epoch's last training batch has run
        self._epoch_values: dict[str, Any] = {}
        self._checkpoints: list[str] = []  # saved as the open epoch ended

    def on_train_start(self, trainer, pl_module) -> None:
        self.logger._open(trainer)
        if len(trainer.optimizers) != 1:
            log.warning("hlbd: %d optimizers; the LR recorded is the first one's",
                        len(trainer.optimizers))
        if trainer.optimizers:
            self.logger.run.watch(trainer.optimizers[0])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        run = self.logger.run
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        if run is None or not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        clip = trainer.gradient_clip_val
        algorithm = str(trainer.gradient_clip_algorithm or "norm").lower()
        limit = (float(clip) if clip else math.inf) if algorithm.endswith("norm") else None
        run._measured(norm.detach(), limit)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._close_epoch()
        self._last_batch_done = False

    def on_validation_start(self, trainer, pl_module) -> None:
        # Lightning validates as the epoch ends before on_train_epoch_end: what the
        # module logs there (val_loss) is the epoch's, not a step's. A validation in the
        # middle of an epoch (val_check_interval < 1) stays at its step.
        if self._last_batch_done and not trainer.sanity_checking:
            self._epoch_pending = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        run = self.logger.run
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if run is None or not isinstance(loss, torch.Tensor):
            return
        self._losses.append(loss.detach())
        done = ((batch_idx + 1) % trainer.accumulate_grad_batches == 0
                or batch_idx + 1 == trainer.num_training_batches)
        self._last_batch_done = batch_idx + 1 == trainer.num_training_batches
        if done:
            losses, self._losses = self._losses, []
            # Lightning hands each micro-batch's loss divided by accumulate_grad_batches:
            # their sum is the loss whose gradient the step took.
            run.log({"loss": _mean_over_ranks(
                torch.stack(losses).sum() if len(losses) > 1 else losses[0])})

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_pending = True  # closed once the epoch's own logged values are in

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        run = self.logger.run
        if run is not None:
            checkpoint["hlbd"] = {"run_id": run.id, "step": run.step, "epoch": run.epoch}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        told = checkpoint.get("hlbd")
        if told:  # the run and step it was saved at, wherever the file lies now
            self.logger._run_id = told["run_id"]
            self.logger._resume_at = int(told["step"])

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.logger._error = exception

    def _close_epoch(self) -> None:
        if self._epoch_pending:
            self._epoch_pending = False
            values, self._epoch_values = self._epoch_values, {}
            self.logger.run.end_epoch(values)
            paths, self._checkpoints = self._checkpoints, []
            for path in paths:
                self.logger.run.checkpoint(path)


def _mean_over_ranks(loss: torch.Tensor) -> torch.Tensor:
    """A step's loss under DDP: the mean of every rank's, as DDP averages their gradients
    (each rank calls this at the same step). One all-reduce of a device tensor, no host
    sync (Lightning's strategy.reduce adds a barrier)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss
    total = loss.clone()  # the module's own tensor is not reduced in place
    dist.all_reduce(total)
    return total / dist.get_world_size()


def _trainer_settings(trainer) -> dict:
    return json_safe({
        "max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "gradient_clip_val": trainer.gradient_clip_val,
        "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
        "precision": trainer.precision, "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__})


def _is_number(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 0
    return isinstance(value, int | float) and not isinstance(value, bool)


