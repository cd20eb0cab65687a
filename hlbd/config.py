"""One configuration object for a training run, stored with the run as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hlbd.data import BUNDLED


@dataclass
class TrainConfig:
    datasets: list[str] = field(default_factory=lambda: [BUNDLED])
    name: str | None = None
    seed: int = 0
    epochs: int = 70  # ends a cosine cycle (10 + 20 + 40) at eta_min
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # CosineAnnealingWarmRestarts, stepped once per epoch.
    t_0: int = 10
    t_mult: int = 2
    eta_min: float = 1e-5
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    max_seq_len: int = 256
    dropout: float = 0.1
    save_interval: int = 5
    device: str = "auto"
    amp: bool = True
    step_flush_interval: int = 500
    # Set from the environment, not by flags: the processes torchrun started (1 without
    # it) and the process group's backend for the training tensors (None: no group).
    world_size: int = 1
    backend: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from stored JSON; keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def validate(self) -> None:
        from hlbd.errors import HlbdError

        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.batch_size % self.world_size == 0,
             (f"--batch-size {self.batch_size} does not split evenly over the "
              f"{self.world_size} processes (WORLD_SIZE): it is the global micro-batch, "
              f"so pass a multiple of {self.world_size}")),
            (self.grad_accum >= 1, "--grad-accum must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.max_grad_norm >= 0, "--max-grad-norm must be >= 0 (0: no clipping)"),
            (self.t_0 >= 1 and self.t_mult >= 1, "--t-0 and --t-mult must be >= 1"),
            (self.save_interval >= 0, "--save-interval must be >= 0"),
            (self.d_model % self.n_heads == 0, "--d-model must be divisible by --n-heads"),
        ]
        for ok, message in checks:
            if not ok:
                raise HlbdError(message)
