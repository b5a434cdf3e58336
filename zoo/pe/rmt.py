"""RMT's Manhattan spatial decay as a logit bias: Fan et al., "RMT: Retentive Networks Meet Vision Transformers",
CVPR 2024 (arXiv 2309.11523).  Reference code: qhfan/RMT ``classfication_release/RMT.py::RetNetRelPos2d``.

MaSA ("Manhattan Self-Attention") weights attention by a spatial decay ``D[n, m] = γ^(|Δrow| + |Δcol|)``.  The
paper writes it as ``(Softmax(Q K^T) ⊙ D) V``; the official code (``VisionRetentionAll``) instead adds
``log D = decay * manhattan`` to the scaled logits *before* the softmax, so the weights are renormalised.  We follow
the code: a per-head additive logit bias::

    bias[h, i, j] = log(γ_h) * (|row_i - row_j| + |col_i - col_j|)          (<= 0, 0 on the diagonal)

so ``softmax(s + bias)[i, j] ∝ exp(s_ij) * γ_h ^ d(i, j)``.  Head-wise decay, exactly as ``RetNetRelPos2d``::

    log γ_h = log(1 - 2 ** (-initial_value - heads_range * h / num_heads)),   h = 0 .. num_heads-1

Official stage settings: ``initial_value = 2`` and ``heads_range = 4`` (stages 1-2) / ``6`` (stages 3-4, the 14x14
and 7x7 grids at 224) for RMT-T/S (``VisRetNet``'s constructor default is (1, 3)).  Our default (2, 6) is the
official setting for a 14x14 grid, which is what a ViT-/16 sees at 224.

What is *not* here (other modules in the official block, kept out of this encoding on purpose): the xPos-style
rotation ``theta_shift`` of q/k by the flattened token index (a RoPE — use ``zoo.pe.RoPE``), LePE (a 5x5 depthwise
conv on v), the per-block 3x3 depthwise conv before attention (a CPE), and the axially decomposed form (row then
column attention with 1D decays) used in the early stages.  This is the whole-image (``VisionRetentionAll``) form.

Prefix tokens (cls, registers) are not on the grid: their bias to and from every token is 0 (no decay).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..positions import Positions
from .base import PositionalEncoding
from .registry import register_pe

__all__ = ["manhattan_log_decay", "manhattan_decay_bias", "ManhattanDecay"]


def manhattan_log_decay(num_heads: int, initial_value: float = 2.0, heads_range: float = 6.0) -> Tensor:
    """Per-head ``log γ_h = log(1 - 2^(-initial_value - heads_range * h / num_heads))``, float32 ``[num_heads]``
    (qhfan/RMT ``RetNetRelPos2d.decay``)."""
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if initial_value <= 0 or heads_range < 0:
        raise ValueError(f"need initial_value > 0 and heads_range >= 0 (so that 0 < γ < 1), got "
                         f"initial_value={initial_value}, heads_range={heads_range}")
    h = torch.arange(num_heads, dtype=torch.float64)
    gamma = 1.0 - 2.0 ** (-float(initial_value) - float(heads_range) * h / num_heads)
    return torch.log(gamma).to(torch.float32)


def manhattan_decay_bias(height: int, width: int, log_decay: Tensor, num_prefix: int = 0,
                         device=None) -> Tensor:
    """Bias ``[1, heads, P + h*w, P + h*w]`` float32: ``log γ_head * (|Δrow| + |Δcol|)`` between grid tokens
    (row-major), 0 in the rows and columns of the ``P`` prefix tokens."""
    if height <= 0 or width <= 0:
        raise ValueError(f"grid size must be positive, got {height}x{width}")
    if num_prefix < 0:
        raise ValueError(f"num_prefix must be >= 0, got {num_prefix}")
    if log_decay.ndim != 1:
        raise ValueError(f"log_decay must be [heads], got shape {tuple(log_decay.shape)}")
    rows = torch.arange(height, device=device).repeat_interleave(width)            # [h*w]
    cols = torch.arange(width, device=device).repeat(height)                       # [h*w]
    dist = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()   # [h*w, h*w]
    ld = log_decay.to(device=device, dtype=torch.float32)
    grid_bias = ld[:, None, None] * dist.to(torch.float32)                         # [heads, h*w, h*w]
    if num_prefix:
        n = num_prefix + height * width
        out = torch.zeros(ld.shape[0], n, n, dtype=torch.float32, device=device)
        out[:, num_prefix:, num_prefix:] = grid_bias
        grid_bias = out
    return grid_bias[None]                                                         # [1, heads, n, n]


@register_pe("manhattan_decay", positions="2d", paper="Fan et al., RMT: Retentive Networks Meet Vision Transformers, "
             "CVPR 2024, arXiv:2309.11523")
class ManhattanDecay(PositionalEncoding):
    """RMT Manhattan spatial decay (Fan et al., CVPR 2024) on the ``bias`` hook.

    Args:
        num_heads: heads of the attention it serves.
        initial_value, heads_range: the official head-wise decay parameters (see `manhattan_log_decay`).

    ``bias(q, k, pos, scale)`` reads ``pos.grid_size`` and ``pos.num_prefix`` and returns ``[1, h, n, n]`` float32,
    added to the logits after the ``1/sqrt(d)`` scaling (as the official code, which pre-scales k). ``scale`` is
    unused.  The bias has no parameters: it is built once for all heads and cached per (h, w, prefix, device).
    """

    max_cache = 8

    def __init__(self, num_heads: int, initial_value: float = 2.0, heads_range: float = 6.0):
        super().__init__()
        self.num_heads = num_heads
        self.initial_value, self.heads_range = float(initial_value), float(heads_range)
        # a plain attribute, not a buffer: module.half() must not round the decays
        self._log_decay = manhattan_log_decay(num_heads, initial_value, heads_range)
        self._cache: Dict[Tuple, Tensor] = {}

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, initial_value={self.initial_value}, heads_range={self.heads_range}"

    @property
    def log_decay(self) -> Tensor:
        """float32 ``[num_heads]``: ``log γ_h``."""
        return self._log_decay

    @property
    def gamma(self) -> Tensor:
        """float32 ``[num_heads]``: ``γ_h``."""
        return self._log_decay.exp()

    @property
    def bias_floats_per_pair(self) -> int:
        return self.num_heads                                                    # the rows themselves

    def bias_rows(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float, start: int) -> Tensor:
        """Rows ``start .. start + c - 1`` of `bias` ``[1, h, c, n]`` for the ``c`` queries ``q [b, h, c, d]``,
        one broadcast sum per block: ``log γ_h * |row_i - row| [c, h_grid, 1] + log γ_h * |col_i - col| [c, 1,
        w_grid]`` written into the grid columns (the prefix rows and columns stay 0)."""
        if pos is None or pos.grid_size is None:
            raise ValueError("ManhattanDecay needs Positions with grid_size (h, w) and num_prefix")
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q has {q.shape[1]} heads but ManhattanDecay was built with num_heads={self.num_heads}")
        c, nk = q.shape[-2], k.shape[-2]
        gh, gw = (int(v) for v in pos.grid_size)
        npre = int(pos.num_prefix)
        if nk != npre + gh * gw:
            raise ValueError(f"ManhattanDecay: grid {gh}x{gw} plus {npre} prefix token(s) is {npre + gh * gw} "
                             f"tokens, but k has {nk}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0 or start + c > nk:
            raise ValueError(f"ManhattanDecay: a block of {c} queries starting at key {start!r} does not fit in "
                             f"{nk} keys")
        dev = q.device
        ld = self._log_decay.to(dev)[:, None, None, None]                        # [h, 1, 1, 1]
        idx = torch.arange(start, start + c, device=dev)
        g = (idx - npre).clamp_min(0)
        rows = (torch.div(g, gw, rounding_mode="floor")[:, None] - torch.arange(gh, device=dev)).abs()   # [c, gh]
        cols = ((g % gw)[:, None] - torch.arange(gw, device=dev)).abs()                                 # [c, gw]
        out = torch.zeros(1, self.num_heads, c, nk, device=dev)
        torch.add(ld * rows[:, :, None].float(), ld * cols[:, None, :].float(),
                  out=out[0, :, :, npre:].unflatten(-1, (gh, gw)))               # [h, c, gh, gw]
        out[:, :, idx < npre] = 0.0                                              # prefix queries: no decay
        return out

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, nq, d], k [b, h, nk, d]
        if pos is None or pos.grid_size is None:
            raise ValueError("ManhattanDecay needs Positions with grid_size (h, w) and num_prefix")
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q has {q.shape[1]} heads but ManhattanDecay was built with num_heads={self.num_heads}")
        nq, nk = q.shape[-2], k.shape[-2]
        gh, gw = pos.grid_size
        npre = pos.num_prefix
        if nq != nk or nk != npre + gh * gw:
            raise ValueError(f"ManhattanDecay: grid {gh}x{gw} plus {npre} prefix token(s) is {npre + gh * gw} "
                             f"tokens, but q has {nq} and k has {nk}")
        if torch.compiler.is_compiling():     # torch.export / compile: the grid may be symbolic, no cache
            return manhattan_decay_bias(gh, gw, self._log_decay, npre, device=q.device)
        key = (int(gh), int(gw), int(npre), q.device)
        hit = self._cache.get(key)
        if hit is None:
            # a constant: built outside inference mode (so a cached bias also serves training) and without grad
            with torch.inference_mode(False), torch.no_grad():
                hit = manhattan_decay_bias(gh, gw, self._log_decay, npre, device=q.device)
            while len(self._cache) >= self.max_cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = hit
        return hit
