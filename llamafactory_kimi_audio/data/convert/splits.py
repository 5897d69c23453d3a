"""``--split train,dev[,test]``: parsing the fractions and cutting rows into splits, deterministically."""

from __future__ import annotations

import random

from ...fileio.textio import DataError

SPLIT_NAMES = ("train", "dev", "test")


def parse_split(spec: str | None) -> tuple[float, ...] | None:
    """``"0.9,0.05,0.05"`` → fractions for train/dev(/test); they must sum to 1."""
    if not spec:
        return None
    try:
        fractions = tuple(float(x) for x in spec.split(","))
    except ValueError:
        raise DataError(f"--split {spec}: expected 2 or 3 comma-separated numbers, e.g. 0.9,0.05,0.05") from None
    return check_split(fractions, spec)


def check_split(fractions: tuple[float, ...], spec: str | None = None) -> tuple[float, ...]:
    spec = spec or ",".join(f"{f:g}" for f in fractions)
    if len(fractions) not in (2, 3) or any(f < 0 for f in fractions):
        raise DataError(f"--split {spec}: expected 2 or 3 non-negative fractions (train,dev[,test])")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"--split {spec}: fractions sum to {sum(fractions):g}; they must sum to 1, e.g. 0.9,0.05,0.05")
    return fractions


def split_counts(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder rounding of ``n * fractions`` (deterministic, sums to ``n``)."""
    raw = [n * f for f in fractions]
    counts = [int(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(n: int, fractions: tuple[float, ...], seed: int) -> list[list[int]]:
    """Row indices per split: a seeded shuffle cut by ``split_counts``; each split keeps input order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for count in split_counts(n, fractions):
        parts.append(sorted(order[start : start + count]))
        start += count
    return parts
