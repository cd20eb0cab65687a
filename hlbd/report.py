"""The JSON report ``experiment_report.json`` that older HLBD tools read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from hlbd.errors import HlbdError
from hlbd.fileio import write_atomically

REPORT_NAME = "experiment_report.json"


def build_report(run_id: str, history: dict, dataset_stats: dict) -> dict:
    """The report dict: the older tool's keys plus ``run_id``.

    Lists are the effective history, one entry per epoch (``batch_losses``: per
    optimizer step). NaN/Infinity are written as the JSON literals Python's json module
    reads and writes, as the older tool did; a value never measured is null.
    """
    return {
        "run_id": run_id,
        "control_losses": list(history["control_losses"]),
        "batch_losses": list(history["batch_losses"]),
        "grad_norms": list(history["grad_norms"]),
        "learning_rates": list(history["learning_rates"]),
        "current_epoch": len(history["control_losses"]),
        "total_batches": len(history["batch_losses"]),
        "dataset_stats": dataset_stats,
        "timestamp": datetime.now(UTC).isoformat(),
    }


def encode_report(report: dict) -> bytes:
    """The report as UTF-8 JSON: a key a line, each value (a whole list) on its line.

    Rewritten after every epoch from the recording thread: each value goes through
    json's C encoder, which ``indent`` would turn off (the pure-Python one took most of
    the recording thread's time per epoch, and grew with the history).
    """
    lines = [f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}"
             for key, value in report.items()]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")


def write_report(run_dir: Path, report: dict) -> Path:
    path = Path(run_dir) / REPORT_NAME
    data = encode_report(report)
    # Atomic but not fsynced: rewritten every epoch and rebuildable from the store.
    try:
        write_atomically(path, lambda f: f.write(data), durable=False)
    except OSError as error:
        raise HlbdError(f"{path}: could not write the report ({error.strerror or error}); "
                        "the previous one is intact") from None
    return path
