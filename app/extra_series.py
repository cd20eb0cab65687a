"""The list-valued series an imported run's record kept verbatim (``run["extra"]``):
an older tool's report lists such as ``autopoietic_losses``, which hlbd does not know
how to place on epochs or steps, so they are charted by their position in the list."""

from __future__ import annotations

import math

EXTRA = "extra:"   # a picker option naming one of them: extra:report/autopoietic_losses


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def extra_series(extra: dict | None) -> dict[str, list[float | None]]:
    """Every list of numbers (None allowed: a value not recorded) in ``extra``, at any
    depth, by its path (``report/autopoietic_losses``); at least one value a number."""
    found: dict[str, list[float | None]] = {}

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}/{key}" if path else str(key))
        elif (isinstance(node, list) and node and any(_number(v) for v in node)
              and all(v is None or _number(v) for v in node)):
            found[path] = [None if v is None else float(v) for v in node]

    walk(extra or {}, "")
    return found


def counts(values: list[float | None]) -> tuple[int, int]:
    """How many values of the list are not recorded (None) and how many NaN/Inf."""
    return (sum(v is None for v in values),
            sum(v is not None and not math.isfinite(v) for v in values))
