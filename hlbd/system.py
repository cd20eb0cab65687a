"""What the machine gave a run, sampled as each epoch closes: the process's memory and
CPU time, and on CUDA the device's memory and utilisation.

Each value is what its source says at that moment, under a name that says which:

- ``sys/rss_bytes``: the process's resident memory (psutil);
- ``sys/cpu_seconds``: CPU time the process has used since it started, user and system;
- ``sys/cuda/max_allocated_bytes``, ``sys/cuda/reserved_bytes``: of the CUDA device the
  loop trains on, ``torch.cuda.max_memory_allocated`` (the peak since the process
  started, or since the loop last reset it) and ``memory_reserved``;
- ``sys/cuda/utilization``: the device's utilisation in percent over NVML's last sample
  period, when ``nvidia-ml-py`` is importable.

What cannot be measured here (no CUDA, no NVML, no psutil) is not recorded: missing,
never zero. Under torchrun each rank's values are gathered by rank 0 and named
``sys/rank<r>/...``.
"""

from __future__ import annotations

import torch

PREFIX = "sys"


def sample(device: torch.device | None = None) -> dict[str, float]:
    """This process's values now (``device``: the one the loop trains on)."""
    values: dict[str, float] = {}
    try:
        import psutil
    except ImportError:  # not recorded, rather than made up
        psutil = None
    if psutil is not None:
        process = psutil.Process()
        values["rss_bytes"] = float(process.memory_info().rss)
        times = process.cpu_times()
        values["cpu_seconds"] = float(times.user + times.system)
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        values["cuda/max_allocated_bytes"] = float(torch.cuda.max_memory_allocated(index))
        values["cuda/reserved_bytes"] = float(torch.cuda.memory_reserved(index))
        utilization = _nvml_utilization(index)
        if utilization is not None:
            values["cuda/utilization"] = utilization
    return values


def named(samples: list[dict[str, float]]) -> dict[str, float]:
    """The values of each rank's sample (rank order) under the names a run records:
    ``sys/<name>`` for one process, ``sys/rank<r>/<name>`` for several."""
    if len(samples) == 1:
        return {f"{PREFIX}/{key}": value for key, value in samples[0].items()}
    return {f"{PREFIX}/rank{rank}/{key}": value
            for rank, sample_ in enumerate(samples) for key, value in sample_.items()}


def _nvml_utilization(index: int) -> float | None:
    try:
        import pynvml
    except ImportError:
        return None
    # NVML numbers devices without CUDA_VISIBLE_DEVICES: find torch's device by its UUID.
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is None:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except pynvml.NVMLError:  # no driver, or a device NVML cannot measure
        return None
