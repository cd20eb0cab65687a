"""Runs drawn as groups on the compare charts: which group each picked run is in (by one
config key, by its whole config but the seed, or by its tags), and a group's line: at
each x the mean of the values its members recorded there, with their min-max band and
how many members had one.

A member without a value at an x is not counted there (missing is missing: nothing is
filled in); a NaN/Inf is not a value either (its member's marker shows it). The group's
line breaks only where none of its members has a value but one of them had a gap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

NONE = ""            # no grouping: a line per run
TAGS = "tags"        # runs with the same tags
CONFIG = "config"    # runs whose configs are the same but for SEEDLESS's keys
KEY = "config."      # + a config key: runs with the same value of it
# What seeds of one config differ in besides the seed: the run's name and its held-out
# split (its seed and the hash of its held-out inputs follow the seed).
SEEDLESS = ("seed", "name", "split")
NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class Grouping:
    """Which group each picked run is in and each group's colour (hashable, for caches).

    ``of``: (run label, group label) per picked run in the charts' order; ``colors``:
    (group label, colour) per group in the order they are drawn; ``members``: draw the
    members' own lines too."""

    by: str
    of: tuple[tuple[str, str], ...]
    colors: tuple[tuple[str, str], ...]
    members: bool = False

    @property
    def labels(self) -> list[str]:
        return [group for group, _ in self.colors]

    def group(self, run_label: str) -> str:
        return dict(self.of)[run_label]

    def size(self, group: str) -> int:
        return sum(g == group for _, g in self.of)


def choices(runs: list[dict]) -> list[str]:
    """What the picked ``runs`` can be grouped by: nothing, their configs but the seed,
    their tags, then each config key any of them has."""
    keys = sorted({k for r in runs for k in (r.get("config") or {})})
    return [NONE, CONFIG, TAGS, *(KEY + k for k in keys)]


def title(by: str) -> str:
    """How a choices() entry reads in the picker."""
    if by == NONE:
        return "nothing (a line per run)"
    if by == CONFIG:
        return "config but the seed"
    if by == TAGS:
        return "tags"
    return by.removeprefix(KEY)


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def names(runs: list[dict], by: str) -> dict[str, str]:
    """Each run's group (run_id -> group label) under ``by`` (a choices() entry)."""
    if by == TAGS:
        return {r["run_id"]: "tags: " + ", ".join(sorted(r.get("tags") or [])) if r.get("tags")
                else "no tags" for r in runs}
    if by == CONFIG:
        configs = {r["run_id"]: {k: _value(v) for k, v in (r.get("config") or {}).items()
                                 if k not in SEEDLESS} for r in runs}
        # Named by the keys in which the groups differ (all the same: one group).
        differ = sorted({k for c in configs.values() for k in c
                         if len({c2.get(k) for c2 in configs.values()}) > 1})
        return {run_id: ", ".join(f"{k} = {c.get(k, NOT_RECORDED)}" for k in differ)
                or "same config" for run_id, c in configs.items()}
    key = by.removeprefix(KEY)
    return {r["run_id"]: f"{key} = {_value((r.get('config') or {})[key])}"
            if key in (r.get("config") or {}) else f"{key} {NOT_RECORDED}" for r in runs}


def grouping(runs: list[dict], by: str, label, colors: dict[str, str],
             members: bool = False) -> Grouping | None:
    """The Grouping of the picked ``runs`` (in the charts' order) under ``by``, None for
    NONE; ``label(run)`` names a run, ``colors`` is each run's colour: a group takes its
    first member's, so it keeps a colour of the runs it holds."""
    if by == NONE:
        return None
    group_of = names(runs, by)
    of = tuple((label(r), group_of[r["run_id"]]) for r in runs)
    first = {}
    for r in runs:
        first.setdefault(group_of[r["run_id"]], colors[r["run_id"]])
    return Grouping(by=by, of=of, colors=tuple(first.items()), members=members)


def colors_by_tags(runs: list[dict], colors: dict[str, str]) -> dict[str, str]:
    """Each run in the colour of the first of ``runs`` with the same tags (ungrouped, a
    line per run, coloured as its tags' group)."""
    tags, first = names(runs, TAGS), {}
    return {r["run_id"]: first.setdefault(tags[r["run_id"]], colors[r["run_id"]])
            for r in runs}


def aggregate(values: pd.DataFrame, gaps: pd.DataFrame, grouping: Grouping) -> pd.DataFrame:
    """The groups' lines from their members' drawn values.

    ``values``: run, x, value and optionally lo, hi (a bucket's min and max) of each
    member where it has a finite value; ``gaps``: run, x where a member has a place but
    no finite value. Returns run (the group), x, value (the mean of the members' values
    there), lo and hi (the lowest and highest value any member recorded there: its bucket's
    min and max when it has them), n (how many members have a value there) and piece (a
    new one after an x where no member has a value but one has a gap)."""
    columns = ["run", "x", "value", "lo", "hi", "n", "piece"]
    if values.empty:
        return pd.DataFrame(columns=columns)
    low = values["lo"].fillna(values["value"]) if "lo" in values else values["value"]
    high = values["hi"].fillna(values["value"]) if "hi" in values else values["value"]
    group_of = dict(grouping.of)
    rows = pd.concat([
        pd.DataFrame({"group": values["run"].map(group_of), "x": values["x"],
                      "member": values["run"], "value": values["value"], "low": low,
                      "high": high}),
        pd.DataFrame({"group": gaps["run"].map(group_of), "x": gaps["x"],
                      "member": gaps["run"], "value": np.nan, "low": np.nan,
                      "high": np.nan})], ignore_index=True)
    rows["counted"] = rows["member"].where(rows["value"].notna())
    g = rows.groupby(["group", "x"], sort=True).agg(
        value=("value", "mean"), lo=("low", "min"), hi=("high", "max"),
        n=("counted", "nunique")).reset_index()
    order = {label: i for i, label in enumerate(grouping.labels)}
    out = []
    for group, lines in g.groupby("group", sort=False):
        lines = lines.sort_values("x")
        kept = (lines["n"] > 0).to_numpy()
        piece = np.cumsum(~kept)[kept] + 100_000 * order[group]
        out.append(pd.DataFrame({"run": group, "x": lines["x"][kept],
                                 "value": lines["value"][kept], "lo": lines["lo"][kept],
                                 "hi": lines["hi"][kept],
                                 "n": lines["n"][kept].astype(int),
                                 "piece": piece.astype(np.int32)}))
    out.sort(key=lambda f: order[f["run"].iloc[0]] if len(f) else 0)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=columns)
