"""Options and output helpers shared by several commands."""

from __future__ import annotations

import math
from collections.abc import Sequence

import click

db_option = click.option(
    "--db", envvar="HLBD_DB", default=None, show_envvar=True,
    help="Run database: a SQLAlchemy URL or a SQLite file path [default: ./hlbd.db].")


def format_value(value) -> str:
    """A cell as text: missing is shown as missing, NaN and Inf as themselves."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain fixed-width text table."""
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)
