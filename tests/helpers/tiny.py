"""The tiny model the training tests use, defined once: as a TrainConfig for a run in the
test's own process (``tiny_config``) and as ``hlbd train`` flags for a run in a
subprocess (``tiny_flags``).

Both take presets (dicts such as RESUMABLE) and then keyword overrides, applied in that
order: ``tiny_config(RESUMABLE, epochs=4)``, ``tiny_flags(RESUMABLE, epochs=60)``.
"""

from __future__ import annotations

from hlbd.cli.train import TRAIN_FLAGS
from hlbd.config import TrainConfig

# An epoch of the bundled data in well under a second on a CPU.
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "batch_size": 16,
        "dropout": 0.0, "device": "cpu"}
# A run in the test's process is short, checkpoints only at its end and writes its steps
# at each epoch's end; a subprocess keeps the CLI's defaults (70, 5, 500) unless its
# flags say otherwise.
IN_PROCESS = {"epochs": 2, "save_interval": 0, "step_flush_interval": 1000}
# For the resume tests: dropout on, so that the random state matters on resume, and a
# cosine cycle short enough to restart within a test.
RESUMABLE = {"dropout": 0.2, "seed": 7, "t_0": 2, "t_mult": 2}

FLAG_OF = {field: flag for flag, field, _, _ in TRAIN_FLAGS}


def _values(base: dict, presets: tuple[dict, ...], overrides: dict) -> dict:
    values = dict(base)
    for preset in presets:
        values.update(preset)
    values.update(overrides)
    return values


def tiny_config(*presets: dict, **overrides) -> TrainConfig:
    """The tiny model for a run in this process (TINY, then IN_PROCESS, presets, overrides)."""
    return TrainConfig(**_values({**TINY, **IN_PROCESS}, presets, overrides))


def tiny_flags(*presets: dict, quiet: bool = True, **overrides) -> list[str]:
    """The tiny model as ``hlbd train`` flags (TINY, then presets, overrides), each flag
    once, ending with ``--quiet`` unless ``quiet`` is False."""
    flags = [x for field, value in _values(TINY, presets, overrides).items()
             for x in (FLAG_OF[field], str(value))]
    return [*flags, "--quiet"] if quiet else flags
