"""The runs table's order: a click on a column header sorts by that column, here on the
server over every run; a second click reverses it, a third goes back to newest first.

The grid's own header sort compares a NaN cell as the text "NaN" against numbers, which
is neither above nor below them, so a run whose loss is NaN could land first, as the best
loss. Sorted here, NaN and then values not recorded go last whichever way.
"""

from __future__ import annotations

import math

ARROWS = {False: "↑", True: "↓"}


def _missing(value) -> int:
    """0 for a value, 1 for NaN, 2 for not recorded: the groups that sort last."""
    if value is None:
        return 2
    if isinstance(value, float) and math.isnan(value):
        return 1
    return 0


def order(values: list, descending: bool = False) -> list[int]:
    """The positions of ``values`` in sorted order: values ascending (or descending),
    then NaN, then values not recorded; equal values keep their order."""
    present = [i for i, v in enumerate(values) if not _missing(v)]
    present.sort(key=lambda i: values[i], reverse=descending)  # stable either way
    return present + [i for i, v in enumerate(values) if _missing(v) == 1] + [
        i for i, v in enumerate(values) if _missing(v) == 2]


def clicked(state: tuple[str, bool] | None, column: str) -> tuple[str, bool] | None:
    """The sort after a click on ``column``'s header, from ``state`` (column, whether
    descending; None: newest first): ascending, then descending, then newest first."""
    if state is None or state[0] != column:
        return (column, False)
    if not state[1]:
        return (column, True)
    return None


def label(column: str, state: tuple[str, bool] | None) -> str:
    """A column's header: its name, with an arrow when the table is sorted by it."""
    if state is None or state[0] != column:
        return column
    return f"{column} {ARROWS[state[1]]}"
