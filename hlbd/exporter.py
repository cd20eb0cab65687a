"""A run's effective history out of the store: as the JSON report, or as CSV.

JSON has the keys of ``experiment_report.json`` (``hlbd.report.build_report``), so
tools that read the older format read an export too; null where nothing was recorded,
NaN and Infinity as the JSON literals Python writes. CSV has one row per effective
epoch; an empty cell is NULL (not recorded), ``nan``/``inf`` are measured values.
"""

from __future__ import annotations

import csv
import io
import json

from hlbd.report import build_report, history_of
from hlbd.store import Store

CSV_COLUMNS = ("epoch", "segment", "loss", "grad_norm", "grad_norm_max", "grad_norm_min",
               "steps", "nonfinite_steps", "clipped_steps", "skipped_steps", "lr",
               "token_accuracy", "wall_seconds", "tokens", "tokens_per_second",
               "recorded_at")


def export_report(store: Store, run_id: str) -> dict:
    """Run ``run_id`` (an id or unique prefix) as a report dict."""
    run = store.get_run(run_id)
    history = history_of(store.epochs(run["run_id"]), store.steps(run["run_id"]))
    return build_report(run["run_id"], history, run["dataset_stats"])


def export_json(store: Store, run_id: str) -> str:
    return json.dumps(export_report(store, run_id), ensure_ascii=False, indent=2)


def export_csv(store: Store, run_id: str) -> str:
    """Run ``run_id``'s effective epochs as CSV with a header row."""
    run_id = store.resolve_run_id(run_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for epoch in store.epochs(run_id):
        writer.writerow(["" if epoch[c] is None else epoch[c] for c in CSV_COLUMNS])
    return out.getvalue()
