"""How numbers are shown: a missing value says "not recorded"; NaN and Inf show as such.

Tables get these as text on purpose: a DataFrame (and Arrow) would turn both a missing
value and a measured NaN into the same empty cell.
"""

from __future__ import annotations

import math

import pandas as pd

NOT_RECORDED = "not recorded"


def exact(value: float | None) -> str:
    """Every digit the stored number has (what tooltips show), or "not recorded"."""
    if value is None:
        return NOT_RECORDED
    return repr(float(value)) if isinstance(value, float) else str(value)


def short(value: float | None, digits: int = 6) -> str:
    """A number for a table cell: ``digits`` significant digits, NaN/Inf as themselves."""
    if value is None:
        return NOT_RECORDED
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def table(rows: list[dict], measured: tuple[str, ...]) -> pd.DataFrame:
    """Rows as a DataFrame whose ``measured`` columns are shown with ``short``."""
    frame = pd.DataFrame(rows)
    for column in measured:
        if column in frame.columns:
            frame[column] = [short(r.get(column)) for r in rows]
    return frame
