"""HLBD datasets: read both formats into (input, output) pairs, mix and shuffle them.

Hardcore format: ``{"data": {module: [{"input": str, "output": str}, ...]}}``.
Full format:     ``{"samples": [{"concept": str, "level_1": {...}, ..., "level_8": {...}}]}``;
each sample becomes one pair, the concept as input and its eight levels as output,
tagged with the HLBD language tags.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from hlbd.errors import DatasetError
from hlbd.fileio import read_json_file

BUNDLED = "bundled:hlbd-basics"
FULL_LEVELS = tuple(f"level_{i}" for i in range(1, 9))
# The tag that opens each level's text in a Full sample's output (None: untagged).
LEVEL_TAGS = {"level_1": "[EMOJI]", "level_2": "[PHRASE]", "level_3": None,
              "level_4": "[PY]", "level_5": "[EN]", "level_6": None,
              "level_7": "[JP]", "level_8": "[KR]"}


@dataclass(frozen=True)
class Pair:
    """One question and its answer. ``module``: the Hardcore module it came from;
    ``levels``: a Full sample, whose output is its eight levels, one line each."""

    input: str
    output: str
    module: str | None = None
    levels: bool = False


def load_dataset(path: str | Path) -> list[Pair]:
    """Read one HLBD file (either format); raises DatasetError naming file and item."""
    name = str(path)
    if name == BUNDLED:
        return parse_dataset(bundled_dataset(), name)
    _, doc = read_json_file(Path(path), DatasetError, "dataset")
    return parse_dataset(doc, name)


def parse_dataset(doc: object, name: str) -> list[Pair]:
    """Pairs from a decoded HLBD document of either format."""
    if isinstance(doc, dict) and "data" in doc:
        pairs = _parse_hardcore(doc["data"], name)
    elif isinstance(doc, dict) and "samples" in doc:
        pairs = _parse_full(doc["samples"], name)
    else:
        raise DatasetError(f"{name}: unknown dataset format: expected an object with "
                           "'data' (HLBD Hardcore) or 'samples' (HLBD Full)")
    if not pairs:
        raise DatasetError(f"{name}: dataset is empty: no pairs to train on")
    return pairs


def _text(value: object, name: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{name}: {where} must be a non-empty string")
    return value


def _parse_hardcore(data: object, name: str) -> list[Pair]:
    if not isinstance(data, dict):
        raise DatasetError(f"{name}: 'data' must map module names to lists of items")
    pairs = []
    for module, items in data.items():
        if not isinstance(items, list):
            raise DatasetError(f"{name}: data[{module!r}] must be a list of items")
        for i, item in enumerate(items):
            where = f"data[{module!r}][{i}]"
            if not isinstance(item, dict):
                raise DatasetError(f"{name}: {where} must be an object with input and output")
            for field in ("input", "output"):
                if field not in item:
                    raise DatasetError(f"{name}: {where} is missing field {field!r}")
            pairs.append(Pair(_text(item["input"], name, f"{where}.input"),
                              _text(item["output"], name, f"{where}.output"), str(module)))
    return pairs


def _parse_full(samples: object, name: str) -> list[Pair]:
    if not isinstance(samples, list):
        raise DatasetError(f"{name}: 'samples' must be a list")
    pairs = []
    for i, sample in enumerate(samples):
        where = f"samples[{i}]"
        if not isinstance(sample, dict):
            raise DatasetError(f"{name}: {where} must be an object")
        for field in ("concept", *FULL_LEVELS):
            if field not in sample:
                raise DatasetError(f"{name}: {where} is missing field {field!r}")
        concept = _text(sample["concept"], name, f"{where}.concept")
        parts = []
        for level in FULL_LEVELS:
            fields = sample[level]
            if not isinstance(fields, dict) or not fields:
                raise DatasetError(f"{name}: {where}.{level} must be a non-empty object")
            texts = [_text(v, name, f"{where}.{level}.{k}") for k, v in fields.items()]
            tag = LEVEL_TAGS[level]
            parts.append((tag or "") + " ".join(texts))
        pairs.append(Pair(concept, "\n".join(parts), levels=True))
    return pairs


def load_datasets(paths: list[str]) -> tuple[list[tuple[str, Pair]], dict[str, int]]:
    """Every pair of every file, tagged with its file, and the per-file pair counts."""
    tagged: list[tuple[str, Pair]] = []
    stats: dict[str, int] = {}
    for path in paths:
        pairs = load_dataset(path)
        key = path if path == BUNDLED else str(Path(path).name)
        if key in stats:
            key = str(path)
        stats[key] = len(pairs)
        tagged.extend((key, p) for p in pairs)
    return tagged, stats


def mix(pairs: list[Pair], seed: int) -> list[Pair]:
    """A reproducible shuffle of the pairs of all datasets (same seed, same order)."""
    mixed = list(pairs)
    random.Random(seed).shuffle(mixed)
    return mixed


def bundled_dataset() -> dict:
    """The bundled default dataset, in the Hardcore format, generated deterministically.

    Small exact facts a character model can learn in minutes on a CPU: sums and
    differences, shape facts, zodiac order, unit conversions.
    """
    arithmetic = []
    for a in range(0, 20, 2):
        for b in range(1, 20, 3):
            arithmetic.append({"input": f"{a} + {b} = ?", "output": str(a + b)})
            if a >= b:
                arithmetic.append({"input": f"{a} - {b} = ?", "output": str(a - b)})
    shapes = [("三角形", 3), ("正方形", 4), ("五边形", 5), ("六边形", 6), ("八边形", 8)]
    geometry = [{"input": f"{shape}有几条边？", "output": str(n)} for shape, n in shapes]
    geometry += [{"input": f"{shape}内角和是多少度？", "output": f"{(n - 2) * 180}度"}
                 for shape, n in shapes]
    animals = ["鼠", "牛", "虎", "兔", "龙", "蛇", "马", "羊", "猴", "鸡", "狗", "猪"]
    zodiac = [{"input": f"{a}的下一个生肖是？", "output": animals[(i + 1) % 12]}
              for i, a in enumerate(animals)]
    units = [("千米", "米", 1000), ("米", "厘米", 100), ("厘米", "毫米", 10),
             ("小时", "分钟", 60), ("分钟", "秒", 60), ("千克", "克", 1000)]
    unit_facts = [{"input": f"{k}{big}等于多少{small}？", "output": f"{k * f}{small}"}
                  for big, small, f in units for k in (1, 2, 3)]
    return {
        "metadata": {"name": "hlbd bundled basics", "generator": "hlbd.data.bundled_dataset"},
        "data": {"arithmetic": arithmetic, "geometry": geometry, "zodiac": zodiac,
                 "units": unit_facts},
    }
