"""Content-hash train/val/test splits: an item's split is a function of its bytes only, so identical content always
lands in the same split and a split never changes when other items are added or removed."""
from __future__ import annotations

from typing import Sequence, Tuple

__all__ = ["SPLITS", "split_for_hash"]

SPLITS: Tuple[str, ...] = ("train", "val", "test")


def split_for_hash(sha256_hex: str, fractions: Sequence[float] = (0.90, 0.05, 0.05)) -> str:
    """Map a content hash to a split: the first 64 bits as a number in [0, 1) against cumulative ``fractions``."""
    x = int(sha256_hex[:16], 16) / float(1 << 64)
    acc = 0.0
    for name, frac in zip(SPLITS, fractions):
        acc += frac
        if x < acc:
            return name
    return [name for name, frac in zip(SPLITS, fractions) if frac > 0][-1]  # float round-off at the top end
