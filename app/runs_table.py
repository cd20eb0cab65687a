"""The runs table over every run: its columns (the summaries, tags, notes and every config
key), each run's cells, and the filter, order and page the Runs page asks for.

The cells of every run are laid out once per run list (run_list.RunList.generation) and
thresholds, and shared by every session; a page run then filters and sorts positions
over all runs and builds a frame of one page only, so the browser never gets more rows
than it shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

import filters
import formats
import reads
import table_sort

STATUSES = ["running", "stale", "crashed", "finished", "interrupted", "failed", "imported"]
STATUS_COLORS = ["#1f77b4", "#b07aa1", "#d62728", "#2ca02c", "#ff7f0e", "#8c564b",
                 "#7f7f7f"]
# Cell kinds: how a column's values become a frame column (and so sort and show).
TEXT, MEASURED, COUNTED, TIME, LIST = "text", "measured", "counted", "time", "list"


@dataclass(frozen=True)
class Column:
    """A column of the runs table: ``id`` names it in the URL, the filter and the sort
    (``last_loss``, ``lr``, ``split.seed``), ``label`` is its header."""

    id: str
    label: str
    kind: str = TEXT
    config: bool = False     # a config key's column


def column_id(label: str) -> str:
    """The name a filter term and the URL use for a column: its label with each run of
    spaces and punctuation written ``_`` (``duration (min)`` -> ``duration_min``)."""
    return re.sub(r"[^\w/.]+", "_", label).strip("_")


def _columns(*specs: tuple[str, str]) -> list[Column]:
    return [Column(column_id(label), label, kind) for label, kind in specs]


# The summaries every run has a cell for, in the order of the default view.
SUMMARIES = _columns(
    ("name", TEXT), ("status", LIST), ("progress", TEXT), ("started (UTC)", TIME),
    ("duration (min)", MEASURED), ("epochs", COUNTED), ("last loss", MEASURED),
    ("best loss", MEASURED), ("best val loss", MEASURED), ("best exact", MEASURED),
    ("max grad norm", MEASURED), ("NaN/Inf steps", COUNTED), ("anomalies", COUNTED),
    ("lr", MEASURED), ("batch size", COUNTED), ("world size", COUNTED), ("tags", LIST),
    ("notes", TEXT), ("datasets", TEXT), ("source", TEXT), ("finished (UTC)", TIME),
    ("last heartbeat (UTC)", TIME), ("planned epochs", COUNTED), ("id", TEXT))
# Shown unless the view names its own columns (world size only when a run has one).
DEFAULT_COLUMNS = ("status", "progress", "started_UTC", "duration_min", "epochs",
                   "last_loss", "best_loss", "best_val_loss", "best_exact", "max_grad_norm",
                   "NaN/Inf_steps", "anomalies", "lr", "batch_size", "world_size", "tags",
                   "notes", "datasets", "source", "id")
# Config keys that a summary column already shows.
SHOWN_AS_SUMMARY = {"lr", "batch_size", "world_size"}


def progress(run: dict) -> str:
    done, planned = run["epochs"], run["planned_epochs"]
    if planned and run["display_status"] in ("running", "stale", "crashed", "interrupted",
                                             "failed"):
        return f"epoch {done} of {planned}"
    return f"{done} of {planned}" if planned else str(done)


def summary_cells(run: dict) -> dict:
    """A run's cell of each summary column, by column id (None: not recorded)."""
    config = run["config"] or {}
    return {
        "name": run["name"], "status": run["display_status"], "progress": progress(run),
        "started_UTC": run["started"],
        "duration_min": run["duration"] / 60 if run["duration"] is not None else None,
        "epochs": run["epochs"], "last_loss": run["last_loss"],
        "best_loss": run["best_loss"], "best_val_loss": run.get("best_val_loss"),
        "best_exact": run.get("best_exact"), "max_grad_norm": run["max_grad_norm"],
        "NaN/Inf_steps": run["nonfinite_steps"], "anomalies": run["anomalies"],
        "lr": config.get("lr"), "batch_size": config.get("batch_size"),
        "world_size": config.get("world_size"), "tags": list(run.get("tags") or []),
        "notes": run.get("notes"), "datasets": ", ".join(run["dataset_stats"]),
        "source": run["source"], "finished_UTC": run.get("finished_at"),
        "last_heartbeat_UTC": (run.get("heartbeat_at") if run["source"] != "imported"
                               else None),
        "planned_epochs": run["planned_epochs"], "id": run["run_id"],
    }


def config_cells(config: dict | None, prefix: str = "") -> dict:
    """A run's config as cells: nested objects one level down as ``outer.inner``, lists
    as text."""
    out = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict) and not prefix:
            out.update(config_cells(value, f"{key}."))
        elif isinstance(value, dict | list):
            out[prefix + key] = str(value)
        else:
            out[prefix + key] = value
    return out


def _kind(values: list) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return COUNTED
    if present and all(isinstance(v, int | float) and not isinstance(v, bool)
                       for v in present):
        return MEASURED
    return TEXT


@dataclass
class AllRuns:
    """Every run's cells, laid out once: ``values[column id]`` has one value per run (in
    the run list's order, newest first); ``fields`` and ``haystacks`` are what a filter
    term can name and what a filter word is looked for in."""

    run_ids: list[str]
    columns: dict[str, Column]
    values: dict[str, list]
    fields: list[dict] = field(repr=False)
    haystacks: list[str] = field(repr=False)
    tags: list[str] = field(default_factory=list)   # every tag a run has, sorted
    filter_keys: set[str] = field(default_factory=set)   # what a comparison can name


def lay_out(runs: list[dict]) -> AllRuns:
    """The cells of ``runs`` (run_list rows with ``anomalies``)."""
    summaries = [summary_cells(r) for r in runs]
    configs = [config_cells(r["config"]) for r in runs]
    columns = {c.id: c for c in SUMMARIES}
    values = {c.id: [s[c.id] for s in summaries] for c in SUMMARIES}
    config_keys = sorted({k for c in configs for k in c} - SHOWN_AS_SUMMARY)
    for key in config_keys:
        cid = f"config.{key}" if key in columns else key
        cells = [c.get(key) for c in configs]
        columns[cid] = Column(cid, cid, _kind(cells), config=True)
        values[cid] = cells
    fields = []
    for config, summary in zip(configs, summaries, strict=True):
        # Config keys by their own names, then the columns' (as before: a column wins).
        fields.append({**{k: v for k, v in config.items() if not isinstance(v, list)},
                       **{k: v for k, v in summary.items() if not isinstance(v, list)},
                       "tags": ", ".join(summary["tags"])})
    haystacks = [" ".join([r["name"], r["run_id"], *r["dataset_stats"], *(r.get("tags") or []),
                           r.get("notes") or ""]).lower() for r in runs]
    tags = sorted({t for r in runs for t in (r.get("tags") or [])})
    return AllRuns([r["run_id"] for r in runs], columns, values, fields, haystacks, tags,
                   {k for f in fields for k in f})


def chosen(all_runs: AllRuns, statuses: list[str], tags: list[str],
           wanted: filters.Filter) -> list[int]:
    """The positions of the runs the view keeps: a shown status, every chosen tag, every
    filter term."""
    shown = set(statuses)
    keep = []
    status, run_tags = all_runs.values["status"], all_runs.values["tags"]
    for i in range(len(all_runs.run_ids)):
        if status[i] in STATUSES and status[i] not in shown:
            continue
        if tags and not all(t in run_tags[i] for t in tags):
            continue
        if ((wanted.words or wanted.comparisons) and not filters.matches(
                wanted, all_runs.haystacks[i], all_runs.fields[i])):
            continue
        keep.append(i)
    return keep


def ordered(all_runs: AllRuns, positions: list[int],
            sort: tuple[str, bool] | None) -> list[int]:
    """``positions`` sorted by ``sort`` (column id, descending), NaN and values not
    recorded last (table_sort.order); None: as listed, newest first."""
    if sort is None or sort[0] not in all_runs.values:
        return positions
    column = all_runs.values[sort[0]]
    values = [_sortable(column[i]) for i in positions]
    return [positions[i] for i in table_sort.order(values, sort[1])]


def _sortable(value):
    """A cell as table_sort orders it: a list (tags, status) by its text."""
    if isinstance(value, list):
        return ", ".join(value) if value else None
    return value


def frame(all_runs: AllRuns, positions: list[int], column_ids: list[str]) -> pd.DataFrame:
    """The rows at ``positions`` (one page) with ``column_ids``, typed for the grid:
    measured numbers keep NaN apart from not recorded, times are times, lists lists."""
    out = {}
    for cid in column_ids:
        column = all_runs.columns[cid]
        cells = [all_runs.values[cid][i] for i in positions]
        if column.kind == MEASURED:
            out[column.label] = formats.measured(
                [None if v is None or isinstance(v, str) else v for v in cells])
        elif column.kind == COUNTED:
            out[column.label] = formats.counted(
                [None if v is None or isinstance(v, str) else v for v in cells])
        elif column.kind == TIME:
            out[column.label] = pd.Series(cells, dtype="datetime64[us]")
        elif column.kind == LIST and cid == "status":
            out[column.label] = [[v] for v in cells]
        elif column.kind == LIST:
            out[column.label] = [list(v) for v in cells]
        else:
            out[column.label] = pd.Series(
                [None if v is None else str(v) if not isinstance(v, str) else v
                 for v in cells], dtype=object)
    return pd.DataFrame(out)


@st.cache_resource(max_entries=4, show_spinner=False)
def every_run(url: str, thresholds: tuple, generation: int) -> AllRuns:
    """Every run's cells under ``thresholds``, laid out once per ``generation`` of the
    run list (reads.run_list) and shared by the sessions; read, never changed."""
    return lay_out(reads.runs(url, thresholds))
