"""Helpers shared by the encodings of relative positions (ALiBi, T5, Shaw, KERPLE, FIRE, Sandwich, ...).

Queries are aligned to the last ``nq`` keys: a KV cache puts earlier keys first, and a block of queries of a chunked
attention names its first key index (``start``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..positions import Positions

__all__ = ["query_key_positions", "toeplitz_offsets", "check_table_length"]


def query_key_positions(pos: Optional[Positions], nq: int, nk: int, device=None,
                        by: str = "this encoding", start: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Positions of the queries ``[b?, nq, 1]`` and of the keys ``[b?, 1, nk]``, queries = the last ``nq`` keys, or
    the keys ``start .. start + nq - 1`` when ``start`` is given (a block of queries, `PositionalEncoding.bias_rows`).

    From ``pos.ids`` (``[b, nk]`` or ``[nk]``, floats allowed; an expanded batch gives one row) when given, else the
    token indices ``0..nk-1`` (long).  ``pj - pi`` is the T5 ``relative_position`` (key - query)."""
    if nq < 0 or nq > nk:
        raise ValueError(f"{by}: need 0 <= nq <= nk (queries are the last nq of the keys), got nq={nq}, nk={nk}")
    if start is None:
        start = nk - nq
    elif isinstance(start, bool) or not isinstance(start, int) or start < 0 or start + nq > nk:
        raise ValueError(f"{by}: a block of {nq} queries starting at key {start!r} does not fit in {nk} keys")
    ids = pos.ids if pos is not None else None
    if ids is None:
        j = torch.arange(nk, device=device)                                      # [nk]
    else:
        if ids.ndim not in (1, 2):
            raise ValueError(f"{by}: pos.ids must be [b, n] or [n], got shape {tuple(ids.shape)}")
        if ids.shape[-1] != nk:
            raise ValueError(f"{by}: pos.ids has {ids.shape[-1]} positions but k has {nk} (ids describe all keys; "
                             f"queries take the last {nq})")
        if ids.ndim == 2 and ids.shape[0] > 1 and ids.stride(0) == 0:
            ids = ids[0]                                                         # expanded batch: one row
        j = ids.to(device)
    return j[..., start:start + nq, None], j[..., None, :]                       # [b?, nq, 1], [b?, 1, nk]


def check_table_length(n: int, by: str) -> None:
    """``n`` (queries = keys of a `PositionalEncoding.bias_table`) must be a positive int."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"{by}.bias_table: n must be a positive int (tokens), got {n!r}")


def toeplitz_offsets(n: int, device=None) -> Tensor:
    """The key - query offsets ``j - i`` of a `PositionalEncoding.bias_table`: long ``[2n - 1]``, ``-(n - 1) .. n -
    1`` (entry ``o`` is the offset ``o - n + 1``)."""
    return torch.arange(-(n - 1), n, device=device)
