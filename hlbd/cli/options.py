"""Options and output helpers shared by several commands."""

from __future__ import annotations

import math
import unicodedata
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


# Zero-width characters that join or select glyphs (emoji sequences): kept, not counted.
JOINERS = {"\u200c", "\u200d"}
ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` safe for one terminal line: control and format characters (newline, tab,
    escape sequences, right-to-left overrides) shown as backslash escapes."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in ESCAPES:
            out.append(ESCAPES[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch not in JOINERS:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def char_width(ch: str) -> int:
    """Terminal columns of one character: 2 for East Asian wide (CJK, most emoji), 0 for
    combining marks and joiners, else 1."""
    if ch in JOINERS or unicodedata.combining(ch) or "\ufe00" <= ch <= "\ufe0f":
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal columns, ending in an ellipsis if cut."""
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        if used + char_width(ch) > width - 1:
            break
        out.append(ch)
        used += char_width(ch)
    return "".join(out) + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence],
          max_width: int | dict[str, int] | None = None) -> str:
    """A plain fixed-width text table, aligned by terminal columns (CJK and emoji are
    two wide), one line per row whatever the cells hold (control characters escaped).

    ``max_width`` cuts longer cells with an ellipsis: one width for every column, or a
    width per header name.
    """
    limits = (max_width if isinstance(max_width, dict)
              else dict.fromkeys(headers, max_width))
    cells = []
    for row in rows:
        line = []
        for header, value in zip(headers, row):
            text = printable(format_value(value))
            line.append(fit(text, limits[header]) if limits.get(header) else text)
        cells.append(line)
    widths = [max([display_width(h), *(display_width(r[i]) for r in cells)])
              for i, h in enumerate(headers)]

    def pad(text: str, width: int) -> str:
        return text + " " * (width - display_width(text))

    lines = ["  ".join(pad(h, w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(pad(c, w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)
