"""Anomaly rules: the one place that decides what is suspicious in a run's record.

Used by the trainer (a warning line and a row in ``anomalies`` when it happens), by
``hlbd anomalies`` and by the explorer. Rules read only recorded values; a value that
was not recorded (None) raises no flag, and NaN/Inf are flagged as what they are.
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

RULES = ("grad_explosion", "grad_vanishing", "nonfinite_loss", "nonfinite_grad_norm",
         "amp_skipped_step", "loss_spike", "loss_rising", "lr_unexplained", "lr_zero",
         "nonfinite_lr", "overfitting")


@dataclass(frozen=True)
class Thresholds:
    grad_explode: float = 10.0     # grad norm above this: explosion
    grad_vanish: float = 0.01      # epoch mean grad norm below this: vanishing
    spike_window: int = 5          # recent epochs a loss is compared with
    spike_z: float = 6.0           # robust z-score (median/MAD) that makes a spike
    spike_min_rise: float = 0.1    # ... and at least this relative rise over the median
    loss_min_rise: float = 0.05    # a spike or a rising run must add at least this (nats)
    rising_epochs: int = 3         # consecutive epochs of rising loss
    restart_grace: int = 8         # epochs after the LR went up in which loss may rise
    lr_rtol: float = 1e-6          # relative gap between recorded and expected LR
    overfit_evals: int = 3         # evaluations in a row of rising val_loss


# What each threshold means, for the explorer's sidebar and `--help`.
THRESHOLD_HELP = {
    "grad_explode": "grad_explosion: an epoch's largest step grad norm (before clipping) "
                    "above this. Healthy runs here stay near 1-3.",
    "grad_vanish": "grad_vanishing: an epoch's mean grad norm below this while the loss "
                   "has not come down: the model stopped learning, not converged.",
    "spike_window": "loss_spike: how many recent epochs (their median and MAD) a loss is "
                    "compared with.",
    "spike_z": "loss_spike: how many robust standard deviations (1.4826 x MAD) above the "
               "recent median a loss must be.",
    "spike_min_rise": "loss_spike: the loss must also be this fraction above the recent "
                      "median (0.1 = 10%).",
    "loss_min_rise": "loss_spike and loss_rising: the rise must also be at least this many "
                     "nats, so the noise of a converged run (loss near 0) raises no flag.",
    "rising_epochs": "loss_rising: this many epochs in a row, each loss above the one "
                     "before.",
    "restart_grace": "loss_spike and loss_rising are expected, not flagged, for this many "
                     "epochs after the recorded LR went up (a warm restart of the "
                     "schedule). An LR rise the schedule does not explain is flagged as "
                     "lr_unexplained.",
    "lr_rtol": "lr_unexplained: relative difference between the recorded LR and what the "
               "configured schedule (CosineAnnealingWarmRestarts) gives for the epoch.",
    "overfit_evals": "overfitting: this many evaluations in a row, each val_loss above the "
                     "one before (by loss-min-rise in all), while the training loss fell "
                     "over the same epochs.",
}

# Rules whose flag names a step when the steps are given to detect().
STEP_RULES = ("nonfinite_loss", "nonfinite_grad_norm", "grad_explosion")


def _first_nonfinite(steps: list[dict], series: str) -> int | None:
    """The first of an epoch's steps whose ``series`` value is NaN/Inf, or None."""
    return next((s["step"] for s in steps if s[series] is not None
                 and not math.isfinite(s[series])), None)


def _flag(run_id, epoch, rule, value, threshold, message, *, segment=None, step=None):
    return {"run_id": run_id, "segment": segment, "epoch": epoch, "step": step,
            "rule": rule, "value": value, "threshold": threshold, "message": message}


def expected_lrs(config: dict, epochs: int) -> list[float] | None:
    """The LR CosineAnnealingWarmRestarts gives each epoch 1..epochs under ``config``.

    None when the config does not describe that schedule (e.g. an imported report).
    """
    try:
        key = (float(config["lr"]), int(config["t_0"]), int(config["t_mult"]),
               float(config["eta_min"]))
    except (KeyError, TypeError, ValueError):
        return None
    # Planned length too, so the trainer's epoch-by-epoch calls share one computation.
    planned = max(epochs, int(config.get("epochs") or 0))
    return list(_scheduler_lrs(*key, planned)[:epochs])


@functools.lru_cache(maxsize=32)
def _scheduler_lrs(base: float, t_0: int, t_mult: int, eta_min: float,
                   epochs: int) -> tuple[float, ...]:
    # torch's CosineAnnealingWarmRestarts stepped once per epoch, statement for statement
    # (its get_lr and step), in plain floats: the same numbers to the last bit, without
    # importing torch into `hlbd anomalies` (tests/test_anomalies.py holds the two equal).
    lrs = []
    t_cur, t_i = 0, t_0
    for _ in range(epochs):
        lrs.append(eta_min + (base - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
        t_cur += 1
        if t_cur >= t_i:
            t_cur %= t_i
            t_i *= t_mult
    return tuple(lrs)


# The epoch values each rule reads: with none of them recorded, a rule is not checked.
RULE_NEEDS = {
    "grad_explosion": ("grad_norm_max", "grad_norm"), "grad_vanishing": ("grad_norm",),
    "nonfinite_grad_norm": ("nonfinite_steps",), "nonfinite_loss": ("loss",),
    "amp_skipped_step": ("skipped_steps",), "loss_spike": ("loss",),
    "loss_rising": ("loss",), "lr_unexplained": ("lr",), "lr_zero": ("lr",),
    "nonfinite_lr": ("lr",), "overfitting": ("val_loss",),
}


def _own_loop(run: dict) -> bool:
    """A run recorded by hlbd.Run: its config does not say which LR schedule it ran."""
    return ((run.get("extra") or {}).get("recorded_by")) == "hlbd.Run"


def not_checked(run: dict, epochs: list[dict],
                val_losses: Mapping[int, float] | None = None) -> dict[str, str]:
    """The rules ``detect`` cannot apply to this run, each with why (a series it needs
    was never recorded; for lr_unexplained, no known schedule to compare with)."""
    missing = {}
    rows = [*epochs, *({"val_loss": v} for v in (val_losses or {}).values())]
    for rule, needs in RULE_NEEDS.items():
        if not any(e.get(n) is not None for e in rows for n in needs):
            missing[rule] = f"no {' or '.join(needs)} recorded"
    if "lr_unexplained" not in missing and (_own_loop(run) or expected_lrs(
            run.get("config") or {}, 0) is None):
        missing["lr_unexplained"] = "the run's config does not give its LR schedule"
    return missing


def detect(run: dict, epochs: list[dict], steps: list[dict] = (),
           thresholds: Thresholds = Thresholds(), *, only_epoch: int | None = None,
           val_losses: Mapping[int, float] | None = None) -> list[dict]:
    """Flags for one run's effective history.

    ``run`` as Store.get_run returns it (``run_id``, decoded ``config``); ``epochs`` and
    ``steps`` as Store.epochs / Store.steps return them (NaN for measured NaN, None for
    not recorded); ``val_losses``: the epoch values ``val_loss`` by epoch (the
    evaluations). ``only_epoch`` limits the result to one epoch (the trainer's use).
    Each flag: run_id, segment, epoch, step, rule, value, threshold, message.
    """
    t = thresholds
    run_id = run["run_id"]
    flags: list[dict] = []
    by_epoch_steps: dict[int, list[dict]] = {}
    for s in steps:
        by_epoch_steps.setdefault(s["epoch"], []).append(s)
    expected = None if _own_loop(run) else expected_lrs(
        run.get("config") or {}, max((e["epoch"] for e in epochs), default=0))
    losses: list[tuple[int, float]] = []
    zero_lr_run = 0
    first_loss = next((e["loss"] for e in epochs if e.get("loss") is not None
                       and math.isfinite(e["loss"])), None)
    previous_lr, lr_rose_at = None, None
    for e in epochs:
        n, seg = e["epoch"], e.get("segment")
        loss, lr = e.get("loss"), e.get("lr")
        if lr is not None and previous_lr is not None and lr > previous_lr * (1 + t.lr_rtol):
            lr_rose_at = n
        previous_lr = lr if lr is not None else previous_lr
        # Right after the LR went up (a warm restart) the loss is expected to climb.
        after_restart = lr_rose_at is not None and n - lr_rose_at < t.restart_grace

        def add(rule, value, threshold, message, step=None, _n=n, _seg=seg):
            flags.append(_flag(run_id, _n, rule, value, threshold, message,
                               segment=_seg, step=step))

        if loss is not None and not math.isfinite(loss):
            step = _first_nonfinite(by_epoch_steps.get(n, []), "loss")
            add("nonfinite_loss", loss, None, f"epoch {n}: loss is {loss}"
                + (f" (first at step {step})" if step is not None else ""), step=step)
        if e.get("nonfinite_steps"):
            step = _first_nonfinite(by_epoch_steps.get(n, []), "grad_norm")
            where = f" (first at step {step})" if step is not None else ""
            add("nonfinite_grad_norm", float(e["nonfinite_steps"]), 0.0,
                f"epoch {n}: {e['nonfinite_steps']} step(s) with a NaN/Inf grad norm{where}",
                step=step)
        if e.get("skipped_steps"):
            add("amp_skipped_step", float(e["skipped_steps"]), 0.0,
                f"epoch {n}: AMP skipped {e['skipped_steps']} optimizer step(s)")
        # Imported reports carry only the epoch mean: then the mean is the peak we know.
        peak = e.get("grad_norm_max")
        if peak is None:
            peak = e.get("grad_norm")
        if peak is not None and math.isfinite(peak) and peak > t.grad_explode:
            at = [s for s in by_epoch_steps.get(n, []) if s["grad_norm"] == peak]
            step = at[0]["step"] if at else None
            add("grad_explosion", peak, t.grad_explode,
                f"epoch {n}: grad norm {peak:.4g} > {t.grad_explode:g}"
                + (f" at step {step}" if step else ""), step=step)
        mean = e.get("grad_norm")
        # A converged run has small gradients too: vanishing is small gradients while
        # the loss is still above half of where it started (or not recorded).
        stuck = (loss is None or first_loss is None or not math.isfinite(loss)
                 or loss > first_loss / 2)
        if mean is not None and math.isfinite(mean) and mean < t.grad_vanish and stuck:
            add("grad_vanishing", mean, t.grad_vanish,
                f"epoch {n}: mean grad norm {mean:.3g} < {t.grad_vanish:g}")
        if loss is not None and math.isfinite(loss):
            recent = [v for _, v in losses[-t.spike_window:]]
            if len(recent) >= 3:
                median = statistics.median(recent)
                mad = statistics.median(abs(v - median) for v in recent) * 1.4826
                limit = max(median + t.spike_z * mad, median * (1 + t.spike_min_rise),
                            median + t.loss_min_rise)
                if loss > limit and not after_restart:
                    add("loss_spike", loss, limit,
                        f"epoch {n}: loss {loss:.4g} spiked above {limit:.4g} (median of "
                        f"last {len(recent)} epochs {median:.4g})")
            window = [v for _, v in losses[-t.rising_epochs:]] + [loss]
            if (len(window) == t.rising_epochs + 1 and not after_restart
                    and loss - window[0] >= t.loss_min_rise
                    and all(b > a for a, b in itertools.pairwise(window))):
                add("loss_rising", loss, float(t.rising_epochs),
                    f"epoch {n}: loss rose {t.rising_epochs} epochs in a row")
            losses.append((n, loss))
        if lr is not None and not math.isfinite(lr):
            add("nonfinite_lr", lr, None, f"epoch {n}: LR is {lr}")
        elif lr is not None:
            if expected is not None and n <= len(expected):
                want = expected[n - 1]
                if not math.isclose(lr, want, rel_tol=t.lr_rtol, abs_tol=1e-12):
                    add("lr_unexplained", lr, want,
                        f"epoch {n}: LR {lr:.6g} is not what the configured schedule "
                        f"gives ({want:.6g}); was scheduler state lost on a resume?")
            zero_lr_run = zero_lr_run + 1 if lr == 0 else 0
            if zero_lr_run >= 2:
                add("lr_zero", lr, 0.0, f"epoch {n}: LR stuck at zero")
    flags += _overfitting(run_id, epochs, val_losses or {}, t)
    if only_epoch is not None:
        flags = [f for f in flags if f["epoch"] == only_epoch]
    return flags


def _overfitting(run_id: str, epochs: list[dict], val_losses: Mapping[int, float],
                 t: Thresholds) -> list[dict]:
    """val_loss rose at each of the last ``overfit_evals`` evaluations (by at least
    ``loss_min_rise`` in all) while the training loss of those epochs fell."""
    train = {e["epoch"]: (e.get("loss"), e.get("segment")) for e in epochs}
    evals = sorted((n, v) for n, v in val_losses.items()
                   if v is not None and math.isfinite(v))
    flags = []
    for i in range(t.overfit_evals, len(evals)):
        window = evals[i - t.overfit_evals:i + 1]
        (first, start), (last, end) = window[0], window[-1]
        rising = all(b > a for (_, a), (_, b) in itertools.pairwise(window))
        before, after = train.get(first, (None, None))[0], train.get(last, (None, None))[0]
        falling = (before is not None and after is not None and math.isfinite(before)
                   and math.isfinite(after) and after < before)
        if rising and falling and end - start >= t.loss_min_rise:
            flags.append(_flag(
                run_id, last, "overfitting", end, float(t.overfit_evals),
                f"epoch {last}: val_loss rose {t.overfit_evals} evaluations in a row "
                f"({start:.4g} at epoch {first} to {end:.4g}) while the training loss fell "
                f"({before:.4g} to {after:.4g})", segment=train.get(last, (None, None))[1]))
    return flags
