"""What a resumed run must reproduce exactly: the per-epoch columns other than wall time
and throughput, which differ from run to run."""

from __future__ import annotations

EXACT_COLUMNS = ("epoch", "loss", "grad_norm", "grad_norm_max", "grad_norm_min", "steps",
                 "nonfinite_steps", "clipped_steps", "lr", "token_accuracy", "tokens")


def exact_metrics(epochs: list[dict]) -> list[tuple]:
    """The EXACT_COLUMNS of each epoch row, for comparing two runs' epochs."""
    return [tuple(e[c] for c in EXACT_COLUMNS) for e in epochs]
