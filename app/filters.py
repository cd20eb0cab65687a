"""The runs table's filter: words and comparisons, read once, with what could not be read.

``basics lr<0.01 batch_size = 16 status!=failed``: a word matches a run's name, id or a
dataset; ``key OP value`` (OP one of ``= != < <= > >=``, spaces around it or not)
compares a table column, named with ``_`` for its spaces (``last_loss``,
``max_grad_norm``), or a config key. Every term must hold. A term that cannot be read (an
operator without a key or a value, a key no run has, an order against something that is
not a number) is left out and named, so a typo never silently empties the table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

OPERATORS = ("<=", ">=", "!=", "=", "<", ">")
_TERM = re.compile(r"(?:(?P<key>[A-Za-z_][\w./]*)\s*)?(?P<op><=|>=|!=|==|=|<|>)\s*"
                   r"(?P<value>[^\s<>=!]+)?|(?P<word>[^\s<>=!]+)")


@dataclass
class Filter:
    """A parsed filter: ``words`` to find, ``comparisons`` (key, operator, value) that
    must hold, and ``problems``: one line per term left out, saying why."""

    words: list[str] = field(default_factory=list)
    comparisons: list[tuple[str, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse(text: str, keys: set[str]) -> Filter:
    """Read ``text``; ``keys`` are the names a comparison may use (columns and config
    keys of the runs there are)."""
    out = Filter()
    for term in _TERM.finditer(text):
        if term["word"]:
            out.words.append(term["word"])
            continue
        key, op, value, whole = term["key"], term["op"], term["value"], term[0].strip()
        op = "=" if op == "==" else op
        if not key:
            out.problems.append(f"`{whole}`: no column or config key before {op}")
        elif not value:
            out.problems.append(f"`{whole}`: nothing to compare {key} with after {op}")
        elif key not in keys:
            out.problems.append(f"`{whole}`: no column or config key is named {key} "
                                f"(there are: {', '.join(sorted(keys))})")
        elif op not in ("=", "!=") and _number(value) is None:
            out.problems.append(f"`{whole}`: {op} needs a number, not {value}")
        else:
            out.comparisons.append((key, op, value))
    return out


def matches(wanted: Filter, haystack: str, fields: dict) -> bool:
    """Whether a run holds every term: the words are in ``haystack`` (its name, id and
    datasets), each comparison holds for ``fields`` (its columns and config)."""
    text = haystack.lower()
    if any(word.lower() not in text for word in wanted.words):
        return False
    return all(holds(fields.get(key), op, value) for key, op, value in wanted.comparisons)


def holds(value, op: str, wanted: str) -> bool:
    """``value OP wanted``: as numbers when both are numbers, else as text (= and !=
    only). A value not recorded holds nothing; a NaN only ``!=``."""
    if value is None:
        return False
    a, b = _number(value), _number(wanted)
    if a is not None and b is not None:
        if math.isnan(a):
            return op == "!="
    elif op in ("=", "!="):
        a, b = str(value).lower(), wanted.lower()
    else:
        return False
    return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b,
            ">=": a >= b}[op]


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
