"""The JSON report ``experiment_report.json`` that older HLBD tools read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from hlbd.errors import HlbdError
from hlbd.fileio import write_atomically

REPORT_NAME = "experiment_report.json"
# The report's history, the older tool's lists: each list's rows (one entry per epoch,
# or per optimizer step) and the row value it holds. The one statement of that shape:
# the loop, the recorder, the exporter, the importer and a checkpoint's import read it.
HISTORY = {"control_losses": ("epochs", "loss"), "batch_losses": ("steps", "loss"),
           "grad_norms": ("epochs", "grad_norm"), "learning_rates": ("epochs", "lr")}
# The epoch lists by the epoch row value they hold.
EPOCH_LISTS = {value: key for key, (rows, value) in HISTORY.items() if rows == "epochs"}


def empty_history() -> dict[str, list]:
    return {key: [] for key in HISTORY}


def history_of(epochs: list[dict], steps: list[dict]) -> dict[str, list]:
    """The history lists of these epoch and step rows."""
    rows = {"epochs": epochs, "steps": steps}
    return {key: [row[value] for row in rows[kind]] for key, (kind, value) in HISTORY.items()}


def add_epoch(history: dict[str, list], epoch: dict, steps: list[dict]) -> None:
    """Append an epoch's row and its steps' rows to ``history``."""
    for key, values in history_of([epoch], steps).items():
        history[key].extend(values)


def build_report(run_id: str, history: dict, dataset_stats: dict) -> dict:
    """The report dict: the older tool's keys plus ``run_id``.

    Lists are the effective history, one entry per epoch (``batch_losses``: per
    optimizer step). NaN/Infinity are written as the JSON literals Python's json module
    reads and writes, as the older tool did; a value never measured is null.
    """
    return {
        "run_id": run_id,
        **{key: list(history[key]) for key in HISTORY},
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
