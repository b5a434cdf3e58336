"""Training-time context extension in the data pipeline: short windows whose position ids are drawn from a longer
range, so a model fine-tuned at ``n`` tokens learns the relative positions of ``target_len``.

    pose_window          PoSE (Zhu et al., "PoSE: Efficient Context Window Extension of LLMs via Positional Skip-wise
                         Training", ICLR 2024, arXiv 2309.10400; official code dwzhu-pku/PoSE, src/train_pose.py)
    randomized_ids       randomized positions (Ruoss et al., "Randomized Positional Encodings Boost Length
                         Generalization of Transformers", ACL 2023, arXiv 2305.16843; also the PoSE repository's
                         ``train_preprocess_function_randomized``)
    POSITION_MODES       the names a task's ``data.positions`` key takes

PoSE, as the official ``train_preprocess_function_pose`` (the revision with ``lt = 0``): a window of ``n`` tokens is
two chunks of the text, the first ``r1`` tokens (``r1 ~ U{1, .., (n + 1) // 2}``) and the ``n - r1`` tokens that end at
``r2 ~ U{n, .., span}`` (the text between them is skipped; ``span`` is what the source offers, the official code cuts
documents at ``5 n``); positions ``0 .. r1 - 1`` for the first chunk and ``r1 + u .. n - 1 + u`` for the second with
``u ~ U{0, .., target_len - n}``.  The labels are the next tokens of that joined text (the first chunk's last token
predicts the second chunk's first, as in the official code, which trains on ``labels = input_ids``).

Randomized: ``n`` distinct positions drawn uniformly from ``0 .. target_len - 1``, sorted.

All draws use the ``torch.Generator`` given, so a batch is a pure function of its generator's seed.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .errors import ConfigError

__all__ = ["POSITION_MODES", "pose_window", "randomized_ids", "check_position_mode"]

#: ``contiguous`` (0 .. n-1), ``pose``, ``randomized``
POSITION_MODES = ("contiguous", "pose", "randomized")


def check_position_mode(mode: str, seq_len: int, target_len, key: str = "data") -> None:
    """Raise `ConfigError` unless ``mode`` is one of `POSITION_MODES` and, for the sampled ones, ``target_len`` is an
    int ``> seq_len``."""
    if mode not in POSITION_MODES:
        raise ConfigError(f"invalid value for config key '{key}.positions': {mode!r} (one of "
                          f"{', '.join(POSITION_MODES)})")
    if mode != "contiguous":
        if isinstance(target_len, bool) or not isinstance(target_len, int) or target_len <= seq_len:
            raise ConfigError(f"{key}.positions={mode} needs {key}.target_len, the length whose positions are "
                              f"sampled, an int > {key}.seq_len={seq_len}; got {target_len!r}")
    elif target_len is not None:
        raise ConfigError(f"{key}.target_len={target_len} is only used with {key}.positions=pose or randomized")


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """One draw of ``U{low, .., high}`` (both inclusive, as Python's ``random.randint``)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def pose_window(n: int, span: int, target_len: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """One PoSE window: ``(text [n + 1], positions [n])``; ``text`` indexes ``span + 1`` source tokens
    (``0 .. span``), the first ``n`` are the inputs and the last ``n`` the labels; ``positions`` are the inputs'
    position ids (see the module docstring).  ``span >= n``."""
    if n < 1 or span < n or target_len < n:
        raise ValueError(f"pose_window needs 1 <= n <= span and n <= target_len, got n={n}, span={span}, "
                         f"target_len={target_len}")
    r1 = _randint(1, (n + 1) // 2, generator)
    r2 = _randint(n, span, generator)
    l2 = r2 - (n - r1)
    text = torch.cat([torch.arange(0, r1), torch.arange(l2, r2 + 1)])            # n + 1 indices (last: a label)
    u = _randint(0, target_len - n, generator)
    pos = torch.arange(n)
    pos[r1:] += u
    return text, pos


def randomized_ids(batch: int, n: int, target_len: int, generator: torch.Generator) -> Tensor:
    """``[batch, n]`` sorted distinct positions drawn uniformly from ``0 .. target_len - 1``."""
    if n > target_len:
        raise ValueError(f"cannot draw {n} distinct positions from {target_len}")
    keys = torch.rand(batch, target_len, generator=generator)
    return keys.topk(n, dim=-1).indices.sort(dim=-1).values                     # a uniform n-subset, sorted
