"""PIE, Positional Integrity Encoding: He et al., "Let the Code LLM Edit Itself When You Edit the Code", ICLR 2025,
arXiv 2407.03157 (the brief that asked for this module cited arXiv 2407.01744; the PIE paper is 2407.03157).
Official code: github.com/zhenyuhe00/PIE announces a release but holds only a README, so this follows the paper.

Setting: a code LLM holds a KV cache of a file; the user edits a span (insert and/or delete tokens) and wants the next
prediction without re-encoding everything. The keys after the edit were rotated by RoPE at their *old* positions
("temporal confusion"). PIE removes the stale rotation and applies the right one in a single multiplication, using
``R(new) = R(new - old) R(old)`` (rotations by angles of the same frequencies commute):

    k_cached = R(old) k   ->   R(new - old) k_cached = R(new) k

Only the positional part is made exact: the cached keys and values of tokens after the edit still carry the context
they were computed with (the paper measures the resulting small loss; full recomputation removes it). The inserted
tokens themselves must be encoded by the model at their new positions and spliced in (`pie_edit_cache`).

Needs frequencies that do not depend on the sequence length: plain / p-RoPE / partial / linear / YaRN / llama3 RoPE
(any layout). For dynamic NTK or LongRoPE give ``seq_len`` and make sure the edit does not change the frequency set.
The attention factor of scaled RoPE is already inside the cached keys and is left alone. Not for xPos (its scale is
centred on the sequence).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .rope import RoPE, _check_layout, apply_rotary, rope_angles

__all__ = ["pie_edit_positions", "pie_rerotate", "pie_edit_cache"]


def _nonneg_int(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise ValueError(f"{name} must be a non-negative int, got {x!r}")
    return x


def pie_edit_positions(num_tokens: int, start: int, num_deleted: int = 0, num_inserted: int = 0,
                       device=None) -> Tuple[Tensor, Tensor]:
    """Old and new positions of the tokens an edit keeps (positions ``0..num_tokens-1`` before the edit).

    The edit deletes ``[start, start + num_deleted)`` and inserts ``num_inserted`` tokens at ``start``: tokens before
    ``start`` keep their position, tokens after the deleted span move by ``num_inserted - num_deleted``. The inserted
    tokens get ``start .. start + num_inserted - 1``.

    Returns:
        ``(old_positions, new_positions)``, int64 ``[num_tokens - num_deleted]`` each; ``old_positions`` also indexes
        the kept rows of a cache laid out by position.
    """
    n = _nonneg_int(num_tokens, "num_tokens")
    start, nd, ni = _nonneg_int(start, "start"), _nonneg_int(num_deleted, "num_deleted"), \
        _nonneg_int(num_inserted, "num_inserted")
    if start > n:
        raise ValueError(f"start={start} is past the end of the {n} cached tokens (0..{n})")
    if start + nd > n:
        raise ValueError(f"num_deleted={nd} from start={start} runs past the {n} cached tokens "
                         f"(at most {n - start} can be deleted there)")
    old = torch.cat([torch.arange(start, device=device), torch.arange(start + nd, n, device=device)])
    new = torch.where(old >= start, old + (ni - nd), old)
    return old, new


def pie_rerotate(k_rotated: Tensor, old_positions: Tensor, new_positions: Tensor, rope: Union[RoPE, Tensor],
                 layout: Optional[str] = None, seq_len: Optional[float] = None) -> Tensor:
    """Move RoPE-rotated keys from ``old_positions`` to ``new_positions`` with one rotation by ``new - old``.

    Args:
        k_rotated: ``[..., n, d]`` keys already rotated at ``old_positions`` (e.g. a KV cache ``[b, h, n, d]``).
        old_positions, new_positions: ``[n]``, or ``[b, n]`` for ``[b, h, n, d]`` keys; int or float.
        rope: the `RoPE` (or `ScaledRoPE`) that rotated them, or its frequencies ``inv_freq [r/2]``.
        layout: with an ``inv_freq`` tensor, its pair layout (``"half"`` default or ``"interleaved"``); with a RoPE
            it must be None or agree.
        seq_len: for length-dependent frequencies (dynamic NTK, LongRoPE): the sequence length whose frequencies
            rotated the cache (and still apply after the edit).

    Returns:
        ``[..., n, d]`` equal (up to float32 rounding) to rotating the unrotated keys at ``new_positions``.
    """
    if isinstance(rope, RoPE):
        if layout is not None and layout != rope.layout:
            raise ValueError(f"layout={layout!r} contradicts the RoPE's layout {rope.layout!r}; omit layout")
        if rope.length_dependent and seq_len is None:
            raise ValueError("this RoPE's frequencies depend on the sequence length (dynamic NTK / LongRoPE): pass "
                             "seq_len, the length whose frequencies rotated the cache")
        layout = rope.layout
        inv_freq = rope.inv_freq(k_rotated.device, seq_len)               # pure rotation: no attention factor
    elif isinstance(rope, Tensor):
        layout = "half" if layout is None else layout
        _check_layout(layout)
        inv_freq = rope
        if inv_freq.ndim != 1:
            raise ValueError(f"inv_freq must be 1-D [r/2], got shape {tuple(inv_freq.shape)}")
    else:
        raise ValueError(f"rope must be a RoPE module or an inv_freq Tensor, got {type(rope).__name__}")
    if not isinstance(old_positions, Tensor) or not isinstance(new_positions, Tensor):
        raise ValueError("old_positions and new_positions must be Tensors")
    if old_positions.shape != new_positions.shape:
        raise ValueError(f"old_positions {tuple(old_positions.shape)} and new_positions "
                         f"{tuple(new_positions.shape)} must have the same shape")
    n = k_rotated.shape[-2]
    if old_positions.ndim not in (1, 2) or old_positions.shape[-1] != n:
        raise ValueError(f"positions must be [n] or [b, n] with n={n} (the keys' dim -2), got "
                         f"{tuple(old_positions.shape)}")
    if 2 * inv_freq.shape[0] > k_rotated.shape[-1]:
        raise ValueError(f"inv_freq has {inv_freq.shape[0]} pairs, more than the keys' head dim "
                         f"{k_rotated.shape[-1]} holds")
    new_positions, old_positions = new_positions.to(k_rotated.device), old_positions.to(k_rotated.device)
    if new_positions.is_floating_point() or old_positions.is_floating_point():
        delta = new_positions.to(torch.float32) - old_positions.to(torch.float32)
    else:
        delta = (new_positions - old_positions).to(torch.float32)        # exact integer shift
    ang = rope_angles(delta, inv_freq)                                    # [(b,) n, r/2]
    cos, sin = ang.cos(), ang.sin()
    if cos.ndim == 3 and k_rotated.ndim == 4:
        cos, sin = cos[:, None], sin[:, None]                             # [b, 1, n, r/2]
    return apply_rotary(k_rotated, cos, sin, layout)


def pie_edit_cache(k_cache: Tensor, v_cache: Tensor, start: int, num_deleted: int, k_inserted: Tensor,
                   v_inserted: Tensor, rope: Union[RoPE, Tensor], layout: Optional[str] = None,
                   seq_len: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """Apply an edit to a KV cache laid out by position (``[..., n, d]``, row ``i`` = position ``i``).

    Deletes rows ``[start, start + num_deleted)``, re-rotates the rows after them by PIE to their new positions, and
    splices in ``k_inserted`` / ``v_inserted`` ``[..., m, d]`` (already computed by the model, keys rotated at
    ``start .. start + m - 1``; ``m = 0`` for a pure deletion). Returns the new ``(k, v)`` ``[..., n - num_deleted + m,
    d]``. Values carry no position and are only moved.
    """
    if k_cache.shape[:-1] != v_cache.shape[:-1] or k_inserted.shape[:-1] != v_inserted.shape[:-1]:
        raise ValueError(f"k and v must agree in all but the last dim: cache {tuple(k_cache.shape)} / "
                         f"{tuple(v_cache.shape)}, inserted {tuple(k_inserted.shape)} / {tuple(v_inserted.shape)}")
    if k_inserted.shape[:-2] != k_cache.shape[:-2] or k_inserted.shape[-1] != k_cache.shape[-1]:
        raise ValueError(f"k_inserted {tuple(k_inserted.shape)} must match the cache {tuple(k_cache.shape)} in every "
                         f"dim but the token dim -2")
    n, m = k_cache.shape[-2], k_inserted.shape[-2]
    old, new = pie_edit_positions(n, start, num_deleted, m, device=k_cache.device)
    head, tail = old[:start], old[start:]
    k_tail = pie_rerotate(k_cache[..., tail, :], tail, new[start:], rope, layout, seq_len)
    k = torch.cat([k_cache[..., head, :], k_inserted.to(k_cache.dtype), k_tail], dim=-2)
    v = torch.cat([v_cache[..., head, :], v_inserted.to(v_cache.dtype), v_cache[..., tail, :]], dim=-2)
    return k, v
