"""Bring runs recorded by older tools (``experiment_report.json``) into the store.

What a report becomes:

- ``control_losses[i]`` is epoch ``i + 1``'s loss; a NaN there was measured and is kept
  as NaN (``loss_is_nan``); null is an epoch whose loss was not recorded.
- ``grad_norms`` / ``learning_rates``, when present, are the epochs' grad norm and LR,
  one per epoch; when absent, null or ``[]`` the columns stay NULL (never filled in).
  A NaN is kept as NaN (``grad_norm_is_nan`` / ``lr_is_nan``), as for the loss.
- ``batch_losses`` become step losses (grad norm and LR NULL), the same number per
  epoch in order, as the older tool trained every epoch on the same batches; a count
  that does not split evenly over the epochs cannot be placed and is kept verbatim in
  ``extra`` instead.
- Every other key (``current_epoch``, ``total_batches``, ``timestamp``, ``run_id``,
  keys hlbd does not know) is kept in ``extra["report"]``; ``dataset_stats`` goes to
  the run's ``dataset_stats``.

A report is refused, naming the file and field, when it is not JSON, not an object,
has no ``control_losses`` or none in it, has a value of the wrong type, or a list whose
length does not match the epochs. All runs of one import go in in one transaction, so
a refused import leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hlbd.errors import HlbdError
from hlbd.fileio import read_json_file
from hlbd.report import EPOCH_LISTS, HISTORY, REPORT_NAME
from hlbd.store import Store

# The epoch lists besides control_losses (which every report must have), by row value.
OPTIONAL_EPOCH_LISTS = {value: key for value, key in EPOCH_LISTS.items() if value != "loss"}
STORED_KEYS = (*HISTORY, "dataset_stats")


class ReportError(HlbdError):
    """A report to import is unreadable, malformed or contradicts itself."""


@dataclass
class ParsedReport:
    """A report turned into the rows the store takes (see ``Store.import_runs``)."""

    path: Path
    name: str
    source_hash: str
    same_as: str | None
    dataset_stats: dict
    epochs: list[dict]
    steps: list[dict]
    extra: dict
    not_recorded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_store_run(self) -> dict[str, Any]:
        return {"name": self.name, "dataset_stats": self.dataset_stats, "extra": self.extra,
                "source_hash": self.source_hash, "same_as": self.same_as,
                "epochs": self.epochs, "steps": self.steps}


@dataclass
class ImportOutcome:
    path: Path
    run_id: str
    outcome: str  # imported, already imported, recorded here
    parsed: ParsedReport

    def describe(self) -> str:
        """One line for the user: what happened to this file."""
        if self.outcome == "already imported":
            return (f"{self.path}: already imported as run {self.run_id}; nothing done")
        if self.outcome == "recorded here":
            return (f"{self.path}: the report of run {self.run_id}, which this store "
                    "recorded itself; nothing done")
        missing = (f"; not recorded: {', '.join(self.parsed.not_recorded)}"
                   if self.parsed.not_recorded else "")
        return (f"{self.path}: imported as run {self.run_id} ({len(self.parsed.epochs)} "
                f"epochs, {len(self.parsed.steps)} steps{missing})")


def report_files(path: str | Path) -> list[Path]:
    """The report itself, or every ``experiment_report.json`` under a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob(REPORT_NAME) if p.is_file())
        if not files:
            raise ReportError(f"{path}: no {REPORT_NAME} under this folder")
        return files
    if not path.is_file():
        raise ReportError(f"{path}: no such file or folder")
    return [path]


def read_report(path: Path, name: str | None = None) -> ParsedReport:
    """Read and check one report file; raises ReportError naming the file and field."""
    raw, doc = read_json_file(path, ReportError, "report")
    default_name = path.parent.name or path.stem
    return parse_report(doc, path, name or default_name,
                        hashlib.sha256(raw).hexdigest())


def parse_report(doc: object, path: Path, name: str, source_hash: str) -> ParsedReport:
    """The rows a decoded report becomes (see the module docstring for the mapping)."""
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: not an experiment report: expected a JSON object, "
                          f"found {_kind(doc)}")
    if doc.get("control_losses") is None:
        raise ReportError(f"{path}: not an experiment report: no control_losses (the "
                          "per-epoch losses); nothing to import")
    losses = _numbers(doc, "control_losses", path)
    if not losses:
        raise ReportError(f"{path}: control_losses is empty: the report has no epoch to "
                          "import")
    n = len(losses)
    columns: dict[str, list[float | None]] = {}
    not_recorded, notes = [], []
    for key in OPTIONAL_EPOCH_LISTS.values():
        values = _numbers(doc, key, path) if doc.get(key) is not None else []
        if not values:
            not_recorded.append(key)
            columns[key] = [None] * n
            continue
        if len(values) != n:
            raise ReportError(f"{path}: {key} has {len(values)} values but control_losses "
                              f"has {n}: cannot tell which epochs they belong to")
        columns[key] = values
    epochs = [{"epoch": i + 1, "loss": losses[i],
               **{value: columns[key][i] for value, key in OPTIONAL_EPOCH_LISTS.items()}}
              for i in range(n)]

    kept = {k: v for k, v in doc.items() if k not in STORED_KEYS}
    batch = _numbers(doc, "batch_losses", path) if doc.get("batch_losses") is not None else []
    steps = []
    if batch and len(batch) % n == 0:
        per_epoch = len(batch) // n
        steps = [{"step": i + 1, "epoch": i // per_epoch + 1, "loss": loss,
                  "grad_norm": None, "lr": None} for i, loss in enumerate(batch)]
    elif batch:
        kept["batch_losses"] = doc["batch_losses"]
        notes.append(f"batch_losses: {len(batch)} values do not split evenly over {n} "
                     "epochs; kept in the run's extra JSON, not as steps")
    else:
        not_recorded.append("batch_losses")

    stats = doc.get("dataset_stats")
    if stats is None:
        stats = {}
    elif not isinstance(stats, dict):
        raise ReportError(f"{path}: dataset_stats must be an object, found {_kind(stats)}")
    extra: dict[str, Any] = {"imported_from": str(path.resolve()), "report": kept}
    same_as = doc.get("run_id") if isinstance(doc.get("run_id"), str) else None
    return ParsedReport(path, name, source_hash, same_as, stats, epochs, steps, extra,
                        not_recorded, notes)


def import_reports(store: Store, path: str | Path,
                   name: str | None = None) -> list[ImportOutcome]:
    """Import a report, or every report under a folder, in one transaction.

    Every file is read and checked first: one bad file refuses the whole import. A file
    whose content was imported before is skipped, as is the report of a run this store
    recorded itself. ``name`` names the run (for a folder: each run, followed by its
    folder); the default is the report's folder name.
    """
    root = Path(path)
    files = report_files(root)
    parsed = []
    for file in files:
        run_name = name
        if name and root.is_dir() and file.parent != root:
            run_name = f"{name}/{file.parent.relative_to(root)}"
        parsed.append(read_report(file, run_name))
    results = store.import_runs([p.as_store_run() for p in parsed])
    return [ImportOutcome(p.path, run_id, outcome, p)
            for p, (run_id, outcome) in zip(parsed, results)]


def _numbers(doc: dict, key: str, path: Path) -> list[float | None]:
    """``doc[key]`` as a list of floats (None for null); anything else is refused."""
    values = doc[key]
    if not isinstance(values, list):
        raise ReportError(f"{path}: {key} must be a list of numbers, found {_kind(values)}")
    out = []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            try:
                out.append(float(value))
            except OverflowError:
                raise ReportError(f"{path}: {key}[{i}] is too large for a float") from None
        else:
            raise ReportError(f"{path}: {key}[{i}] must be a number or null, found "
                              f"{_kind(value)} {json.dumps(value)[:40]}")
    return out


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value),
                                                                        type(value).__name__)
