"""The held-out split: which pairs a run trains on and which it is evaluated on.

A split is a function of the data and the seed alone (not of the order the files were
given in): each stratum (a Hardcore module; Full samples form one) is sorted, shuffled
by the seed and its first ``round(n * fraction)`` pairs are held out. What identifies
it (seed, fraction or file, sizes, a hash of the held-out pairs) is stored in the
run's config, so a resumed or compared run is provably on the same split.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from hlbd.data import Pair

# --val-fraction when it is not given: this fraction of data with at least MIN_PAIRS.
DEFAULT_FRACTION = 0.1
MIN_PAIRS = 50


@dataclass(frozen=True)
class Split:
    train: list[Pair]
    held_out: list[Pair]
    info: dict  # what identifies it: TrainConfig.split


def default_fraction(pairs: int) -> float:
    """--val-fraction's default for data of ``pairs`` pairs."""
    return DEFAULT_FRACTION if pairs >= MIN_PAIRS else 0.0


def stratum(pair: Pair) -> str:
    """What a split is stratified by, and exact match reported per: the module of a
    Hardcore pair; Full samples are one stratum (their levels are scored per level)."""
    if pair.levels:
        return "levels"
    return pair.module or ""


def split_pairs(pairs: list[Pair], fraction: float, seed: int) -> Split:
    """Hold out ``fraction`` of each stratum of ``pairs``, chosen by ``seed``."""
    strata: dict[str, list[Pair]] = {}
    for pair in pairs:
        strata.setdefault(stratum(pair), []).append(pair)
    held: set[int] = set()
    counts = {}
    for name in sorted(strata):
        members = sorted(strata[name], key=lambda p: (p.input, p.output))
        random.Random(f"hlbd-split:{seed}:{name}").shuffle(members)
        taken = math.floor(len(members) * fraction + 0.5)
        held.update(id(p) for p in members[:taken])
        counts[name] = taken
    # Identity, not equality: a pair that occurs twice in the data may fall on both sides.
    train = [p for p in pairs if id(p) not in held]
    held_out = [p for p in pairs if id(p) in held]
    info = {"seed": seed, "fraction": fraction, "train_pairs": len(train),
            "held_out_pairs": len(held_out), "held_out_by_stratum": counts,
            "held_out_sha256": held_out_hash(held_out)}
    return Split(train, held_out, info)


def split_file(pairs: list[Pair], held_out: list[Pair], path: str) -> Split:
    """All of ``pairs`` to train on, the pairs of the file ``path`` held out."""
    counts: dict[str, int] = {}
    for pair in held_out:
        counts[stratum(pair)] = counts.get(stratum(pair), 0) + 1
    info = {"file": path, "train_pairs": len(pairs), "held_out_pairs": len(held_out),
            "held_out_by_stratum": counts, "held_out_sha256": held_out_hash(held_out)}
    return Split(list(pairs), list(held_out), info)


def held_out_hash(pairs: list[Pair]) -> str:
    """SHA-256 of the held-out pairs (inputs and answers), whatever their order."""
    digest = hashlib.sha256()
    for pair in sorted(pairs, key=lambda p: (p.input, p.output)):
        digest.update(pair.input.encode() + b"\x00" + pair.output.encode() + b"\x01")
    return digest.hexdigest()
