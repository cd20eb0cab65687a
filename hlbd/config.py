"""One configuration object for a training run, stored with the run as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

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
    # Checkpoint files kept: the newest N a resume could use (0: all); older ones are
    # deleted once a newer one is written and recorded, and marked pruned in the store.
    keep_checkpoints: int = 3
    device: str = "auto"
    amp: bool = True
    step_flush_interval: int = 500
    # The held-out split (hlbd.split): a fraction of each module held out, or a file of
    # its own. None: DEFAULT_FRACTION of data with MIN_PAIRS pairs or more, else none.
    val_fraction: float | None = None
    val_dataset: str | None = None
    eval_every: int = 1  # evaluate on it every N epochs, and after the last
    eval_max_pairs: int = 100  # pairs answered by greedy decoding (exact match) each time
    # Set when the run starts, not by flags: what identifies the split (seed, sizes, a
    # hash of the held-out pairs), so a resume can prove it is on the same one.
    split: dict | None = None
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
        values = {k: v for k, v in values.items() if k in known}
        # A run from before held-out splits trained on all of its data.
        values.setdefault("val_fraction", 0.0)
        return cls(**values)

    def validate(self) -> None:
        """Refuse, before any run exists, a config that cannot train what it says; the
        message names the flag."""
        from hlbd.errors import HlbdError

        for message in self.problems():
            raise HlbdError(message)

    def problems(self) -> list[str]:
        """One line per flag whose value cannot train (empty: the config is sound)."""
        def finite(x) -> bool:
            return isinstance(x, int | float) and math.isfinite(x)

        checks = [
            (name_problem(self.name) is None, name_problem(self.name)),
            (0 <= self.seed < 2**32, "--seed must be between 0 and 4294967295"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.batch_size % self.world_size == 0,
             (f"--batch-size {self.batch_size} does not split evenly over the "
              f"{self.world_size} processes (WORLD_SIZE): it is the global micro-batch, "
              f"so pass a multiple of {self.world_size}")),
            (self.grad_accum >= 1, "--grad-accum must be at least 1"),
            (finite(self.lr) and self.lr > 0, f"--lr must be a positive number, not {self.lr}"),
            (finite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be a number >= 0, not {self.weight_decay}"),
            (not math.isnan(self.max_grad_norm) and self.max_grad_norm >= 0,
             f"--max-grad-norm must be >= 0 (0: no clipping), not {self.max_grad_norm}"),
            (self.t_0 >= 1 and self.t_mult >= 1, "--t-0 and --t-mult must be >= 1"),
            (finite(self.eta_min) and self.eta_min >= 0,
             f"--eta-min must be a number >= 0, not {self.eta_min}"),
            (self.save_interval >= 0, "--save-interval must be >= 0"),
            (isinstance(self.keep_checkpoints, int) and self.keep_checkpoints >= 0,
             f"--keep-checkpoints must be >= 0 (0: keep all), not {self.keep_checkpoints}"),
            (self.d_model >= 1, "--d-model must be at least 1"),
            (self.n_layers >= 1, "--n-layers must be at least 1"),
            (self.n_heads >= 1, "--n-heads must be at least 1"),
            (self.n_heads < 1 or self.d_model % self.n_heads == 0,
             f"--d-model ({self.d_model}) must be divisible by --n-heads ({self.n_heads})"),
            (self.d_ff >= 1, "--d-ff must be at least 1"),
            (self.max_seq_len >= 1, "--max-seq-len must be at least 1"),
            (finite(self.dropout) and 0 <= self.dropout < 1,
             f"--dropout must be in [0, 1), not {self.dropout}"),
            (self.step_flush_interval >= 1, "--step-flush-interval must be at least 1"),
            (self.val_fraction is None or (finite(self.val_fraction)
                                           and 0 <= self.val_fraction < 1),
             f"--val-fraction must be in [0, 1), not {self.val_fraction}"),
            (not (self.val_dataset and self.val_fraction),
             "--val-dataset holds out a file of its own: leave out --val-fraction"),
            (self.val_dataset is None or bool(str(self.val_dataset).strip()),
             "--val-dataset must name a file"),
            (self.eval_every >= 1, "--eval-every must be at least 1"),
            (self.eval_max_pairs >= 0,
             "--eval-max-pairs must be >= 0 (0: no exact-match answers)"),
            (DEVICE.fullmatch(str(self.device)) is not None,
             f"--device must be auto, cpu, cuda, cuda:N or mps, not {self.device!r}"),
        ]
        return [message for ok, message in checks if not ok]


# The column runs.name is VARCHAR(200): a longer name would fail on PostgreSQL.
NAME_MAX = 200


def name_problem(name: str | None) -> str | None:
    """What is wrong with ``--name name`` (None: nothing, or no name given)."""
    if name is None:
        return None
    if not name.strip():
        return "--name must not be empty (leave it out for the default name)"
    if len(name) > NAME_MAX:
        return f"--name is {len(name)} characters long; at most {NAME_MAX}"
    return None
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")

# What a resume may change; every other flag must match the checkpoint's config, since
# the restored model, optimizer and scheduler states were made under it. (Here, not in
# hlbd.runner, so the CLI builds its flags without importing torch.)
RESUME_SETTABLE = ("epochs", "save_interval", "keep_checkpoints", "device",
                   "step_flush_interval", "eval_every", "eval_max_pairs")


def check_overrides(overrides: dict) -> None:
    """HlbdError naming the first resume flag (RESUME_SETTABLE) whose value is bad."""
    from hlbd.errors import HlbdError

    given = {k: v for k, v in overrides.items() if k in RESUME_SETTABLE and v is not None}
    for message in TrainConfig(**given).problems():
        raise HlbdError(message)

# Under torchrun: seconds a rank waits for the others in any collective (--ddp-timeout).
DDP_TIMEOUT_SECONDS = 300


def config_diff(configs: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The config keys whose values differ between runs: {key: {label: value}}.

    A key one run's config lacks is shown as None for it (it was not recorded).
    """
    keys = sorted({k for config in configs.values() for k in (config or {})})
    diff = {}
    for key in keys:
        values = {label: (config or {}).get(key) for label, config in configs.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            diff[key] = values
    return diff
