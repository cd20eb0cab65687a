"""How numbers are shown: a missing value says "not recorded" (in a SQL result, "NULL");
NaN and Inf show as such.

Table columns of measured numbers are Arrow-backed floats, which (unlike NumPy floats)
keep a measured NaN apart from a missing value: the grid shows ``NaN`` for the one and
the table's placeholder, "not recorded", for the other. They stay numbers, so they sort
as numbers, and are shown with six significant digits, never cut.
"""

from __future__ import annotations

import math
from datetime import datetime

import pandas as pd
import pyarrow as pa
import streamlit as st

NOT_RECORDED = "not recorded"
SQL_NULL = "NULL"   # a SQL result's empty cell: NULL is NULL, whatever it means in the table
NUMBER_FORMAT = "%.6g"


def exact(value: float | None) -> str:
    """Every digit the stored number has, or "not recorded"."""
    if value is None:
        return NOT_RECORDED
    return repr(float(value)) if isinstance(value, float) else str(value)


def short(value: float | None, digits: int = 6) -> str:
    """A number as text: ``digits`` significant digits, NaN/Inf as themselves."""
    if value is None:
        return NOT_RECORDED
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def measured(values) -> pd.Series:
    """Floats where None stays missing and NaN stays NaN (an Arrow-backed column)."""
    clean = [None if v is None else float(v) for v in values]
    return pd.Series(pd.arrays.ArrowExtensionArray(pa.array(clean, type=pa.float64())))


def counted(values) -> pd.Series:
    """Whole numbers where None stays missing."""
    clean = [None if v is None else int(v) for v in values]
    return pd.Series(pd.arrays.ArrowExtensionArray(pa.array(clean, type=pa.int64())))


def number_column(label: str | None = None, **kwargs) -> st.column_config.NumberColumn:
    """A grid column of measured numbers: six significant digits."""
    return st.column_config.NumberColumn(label, format=NUMBER_FORMAT, **kwargs)


def table(rows: list[dict], measured_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows as a DataFrame; every float column (and ``measured_columns``) Arrow-backed,
    so a measured NaN and a value not recorded stay apart."""
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        values = [r.get(column) for r in rows]
        present = [v for v in values if v is not None]
        if column in measured_columns or (present and all(
                isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool))
                for v in present) and any(isinstance(v, float) for v in present)):
            frame[column] = measured(values)
    return frame


def number_columns(frame: pd.DataFrame) -> dict:
    """column_config for every float column of ``frame``: six significant digits."""
    return {c: number_column() for c in frame.columns
            if pd.api.types.is_float_dtype(frame[c].dtype)}


# The grid's text is 14 px Source Sans: at most 7.2 px a character (7.0 for a digit),
# and 8 px of padding each side of a cell.
CHARACTER_PX, CELL_PADDING_PX = 7.2, 24


def text_width(text: str) -> int:
    """Pixels a grid cell needs for ``text`` (an upper bound)."""
    return round(len(text) * CHARACTER_PX + CELL_PADDING_PX)


def missing_widths(frame: pd.DataFrame, missing: str = NOT_RECORDED) -> dict[str, int]:
    """A width for each column of ``frame`` that has an empty cell, wide enough for
    ``missing`` as well as its name and values. The grid sizes a column by the values
    it has, not by the placeholder it draws for a missing one, and cuts a right-aligned
    number column's placeholder from the left ("corded")."""
    out = {}
    for column in frame.columns:
        if not frame[column].isna().to_numpy(dtype=bool).any():
            continue
        texts = [str(column), missing, *(_shown(v) for v in frame[column].dropna())]
        out[column] = max(text_width(t) for t in texts)
    return out


def _shown(value) -> str:
    """About what the grid shows for a value (numbers to six digits, times to seconds)."""
    if isinstance(value, float):
        return short(value)
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return str(value)


def with_widths(config: dict, widths: dict[str, int]) -> dict:
    """``config`` (a column_config mapping) with these columns' widths set."""
    return {**config, **{c: {**(config.get(c) or st.column_config.Column()), "width": w}
                         for c, w in widths.items()}}


def show(frame: pd.DataFrame, *, missing: str = NOT_RECORDED, **kwargs) -> None:
    """st.dataframe with numbers never cut and missing values saying so: ``missing`` is
    what an empty cell shows ("not recorded" for the store's records, "NULL" for a
    SQL result)."""
    config = {**number_columns(frame), **kwargs.pop("column_config", {})}
    config = with_widths(config, missing_widths(frame, missing))
    st.dataframe(frame, column_config=config, placeholder=missing, **kwargs)
