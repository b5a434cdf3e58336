"""ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022 (official code: ofirpress/attention_with_linear_biases).

Each head adds ``-m_h * distance`` to the scaled logits ``q.k / sqrt(d)``; there is no embedding and no parameter.
Slopes are a geometric sequence: for ``h`` a power of two, ``m_k = 2^(-8k/h)``, k = 1..h (section 3: 8 heads ->
1/2, 1/4, ..., 1/256).  Otherwise the official ``get_slopes`` takes the ``P = 2^floor(log2 h)`` slopes plus every
other slope of ``2P`` (the first ``h - P`` of them); x-transformers and the KERPLE/DeepMind code use the same.

Distance, with queries aligned to the last ``nq`` keys (KV caches put earlier keys first)::

    bidirectional:  bias[h, i, j] = -m_h * |j - i|                 (x-transformers AlibiPositionalBias)
    causal:         bias[h, i, j] = -m_h * (i - j)   for j <= i,   0 for j > i (the causal mask removes those)
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor

from ..positions import Positions
from .base import PositionalEncoding
from .relative import check_table_length, query_key_positions, toeplitz_offsets
from .registry import register_pe

__all__ = ["alibi_slopes", "alibi_bias", "ALiBi", "InterpolatedALiBi", "alibi_interpolation_scale",
           "query_key_positions"]


def _geometric_slopes(n: int) -> list:
    # n a power of two: start = 2^(-2^-(log2 n - 3)) = 2^(-8/n), slopes start^1 .. start^n
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    return [start ** (i + 1) for i in range(n)]


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head ALiBi slopes of Press et al. (2022), float32 ``[num_heads]``."""
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    p = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = _geometric_slopes(p)
    if p != num_heads:
        # interleave the slopes of 2P between the P ones, as the official code does for non-powers of two
        slopes += _geometric_slopes(2 * p)[0::2][: num_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


def slopes_on(per_device: Dict[torch.device, Tensor], device=None) -> Tensor:
    """The slopes of ``per_device`` (a plain dict holding at least the CPU copy, so ``module.half()`` does not round
    them) on ``device`` (default CPU), copied there once and kept: one host-to-device copy per device, not one per
    forward."""
    device = torch.device("cpu" if device is None else device)
    hit = per_device.get(device)
    if hit is None:
        hit = per_device[device] = per_device[torch.device("cpu")].to(device)
    return hit


def _bias_from_rel(rel: Tensor, slopes: Tensor, causal: bool) -> Tensor:
    """rel = pos_k - pos_q ``[..., nq, nk]`` -> bias ``[..., h, nq, nk]`` float32."""
    rel = rel.to(torch.float32)
    dist = rel.clamp(max=0) if causal else -rel.abs()                          # -(i - j) on and below the diagonal
    return dist.unsqueeze(-3) * slopes.to(device=rel.device, dtype=torch.float32)[:, None, None]


def alibi_bias(nq: int, nk: int, slopes: Tensor, causal: bool = False, device=None) -> Tensor:
    """ALiBi logit bias ``[1, h, nq, nk]`` float32 for token indices, queries = the last ``nq`` of ``nk`` keys.

    Args:
        nq, nk: query and key counts (``nq <= nk``).
        slopes: ``[h]`` (see `alibi_slopes`).
        causal: ``-(i - j) * m`` below the diagonal and 0 above (pair with a causal mask); else ``-|j - i| * m``.
    """
    if nq < 0 or nq > nk:
        raise ValueError(f"need 0 <= nq <= nk, got nq={nq}, nk={nk}")
    if slopes.ndim != 1:
        raise ValueError(f"slopes must be [h], got shape {tuple(slopes.shape)}")
    i = torch.arange(nk - nq, nk, device=device)                                 # [nq] query positions
    j = torch.arange(nk, device=device)                                          # [nk]
    return _bias_from_rel(j[None, :] - i[:, None], slopes, causal)[None]         # [1, h, nq, nk]


@register_pe("alibi", positions="1d", paper="Press et al., Train Short, Test Long: Attention with Linear Biases "
             "Enables Input Length Extrapolation, ICLR 2022, arXiv:2108.12409", causal_ok=True, relative=True)
class ALiBi(PositionalEncoding):
    """Attention with Linear Biases (Press et al., ICLR 2022) on the ``bias`` hook.

    Args:
        num_heads: heads of the attention it serves.
        causal: causal form (see the module docstring); the attention must still apply the causal mask.
        num_alibi_heads: only the first ``num_alibi_heads`` heads get a bias (slopes of that many heads); the
            others get zero, as x-transformers' ``alibi_num_heads``.

    ``bias(q, k, pos, scale)`` returns ``[1, h, nq, nk]`` from token indices, or ``[b|1, h, nq, nk]`` from the
    differences of ``pos.ids`` (``[b, nk]`` or ``[nk]``, floats allowed) when given.  ``scale`` is unused: the bias
    is added to logits already scaled by ``1/sqrt(d)``.  Index-based biases are cached per (nq, nk, device) in eval.
    """

    bias_from_positions_only = True

    max_cache = 8

    def __init__(self, num_heads: int, causal: bool = False, num_alibi_heads: Optional[int] = None):
        super().__init__()
        if not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        na = num_heads if num_alibi_heads is None else num_alibi_heads
        if not isinstance(na, int) or na <= 0 or na > num_heads:
            raise ValueError(f"num_alibi_heads must be in 1..num_heads={num_heads}, got {num_alibi_heads!r}")
        self.num_heads, self.num_alibi_heads, self.causal = num_heads, na, bool(causal)
        # a plain attribute, not a buffer: module.half() must not round the slopes
        self._slopes: Dict[torch.device, Tensor] = {
            torch.device("cpu"): torch.cat([alibi_slopes(na), torch.zeros(num_heads - na)])}
        self._cache: Dict[tuple, Tensor] = {}

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, num_alibi_heads={self.num_alibi_heads}, causal={self.causal}"

    def slopes(self, device=None) -> Tensor:
        """float32 ``[num_heads]``, zeros for heads beyond ``num_alibi_heads``."""
        return slopes_on(self._slopes, device)

    def _check(self, q: Tensor, k: Tensor) -> None:
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q has {q.shape[1]} heads but {type(self).__name__} was built with "
                             f"num_heads={self.num_heads}")
        if q.shape[-2] > k.shape[-2]:
            raise ValueError(f"q has {q.shape[-2]} positions but k only {k.shape[-2]}: queries must be the last nq "
                             f"of the keys")

    def bias_rows(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float, start: int) -> Tensor:
        return self._rows(q, k, pos, start)

    def _rows(self, q: Tensor, k: Tensor, pos: Optional[Positions], start: int) -> Tensor:
        # q [b, h, c, d]: the queries at key indices start .. start + c - 1; k [b, h, nk, d]
        self._check(q, k)
        if pos is not None and pos.ids is not None and pos.ids.shape[-1] != k.shape[-2]:
            raise ValueError(f"pos.ids has {pos.ids.shape[-1]} positions but k has {k.shape[-2]}")
        pi, pj = query_key_positions(pos, q.shape[-2], k.shape[-2], q.device, by=type(self).__name__, start=start)
        b = _bias_from_rel(pj - pi, self.slopes(q.device), self.causal)          # [b?, h, c, nk]
        return b if b.ndim == 4 else b[None]

    def bias_table(self, n: int, device=None) -> Tensor:
        """``[h, 2n - 1]`` float32: the bias at key - query offset ``o - n + 1`` (`PositionalEncoding.bias_table`)."""
        check_table_length(n, type(self).__name__)
        rel = toeplitz_offsets(n, device)[None]                                  # [1, 2n - 1]
        return _bias_from_rel(rel, self.slopes(device), self.causal)[:, 0]       # [h, 2n - 1]

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, nq, d], k [b, h, nk, d]
        self._check(q, k)
        nq, nk = q.shape[-2], k.shape[-2]
        if (pos is not None and pos.ids is not None) or self.training:
            return self._rows(q, k, pos, nk - nq)
        key = (nq, nk, q.device, torch.is_inference_mode_enabled())
        hit = self._cache.get(key)
        if hit is None:
            hit = alibi_bias(nq, nk, self.slopes(q.device), self.causal, q.device)
            while len(self._cache) >= self.max_cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = hit
        return hit


# ---- ALiBi with position interpolation --------------------------------------------------------------------------

def alibi_interpolation_scale(length: int, factor: Optional[float] = None, train_len: Optional[int] = None) -> float:
    """The divisor of the ALiBi slopes (Al-Khateeb et al., 2023, arXiv 2310.13017; Cerebras BTLM/JAIS
    ``alibi_scaling``): ``factor`` when fixed; dynamic ``length / train_len`` when ``length > train_len``; else 1."""
    if factor is not None:
        return float(factor)
    if train_len is not None and length > train_len:
        return length / float(train_len)
    return 1.0


@register_pe("alibi_interp", positions="1d", paper="Al-Khateeb et al., Position Interpolation Improves ALiBi "
             "Extrapolation, arXiv:2310.13017", causal_ok=True, relative=True, example={"factor": 2.0})
class InterpolatedALiBi(ALiBi):
    """ALiBi with linear position interpolation: Al-Khateeb, Dey, Soboleva & Hestness, "Position Interpolation
    Improves ALiBi Extrapolation", 2023 (arXiv 2310.13017; used by Cerebras BTLM-3B-8k and JAIS as
    ``alibi_scaling={"type": "linear", "factor" | "train_seq_len": ...}``).

    Positions are scaled by ``1 / s`` (``s = eval_len / train_len`` > 1), which for a linear bias is the same as
    dividing every slope by ``s``: ``bias = -(m_h / s) * |j - i|``.  The attention span grows by ``s`` while the
    bias range stays that of training.  Two modes (exactly one must be given):

    * ``factor=s``: fixed interpolation (every length).
    * ``train_len=L``: dynamic, as BTLM/JAIS: ``s = nk / L`` when the key count ``nk`` (cached + new keys) exceeds
      ``L``, else 1 (no change inside the training length).  With a KV cache the scale grows with every step; the
      bias is recomputed each step, so cached keys are unaffected.

    Everything else (causal form, ``num_alibi_heads``, ``pos.ids``) is `ALiBi`.
    """

    def __init__(self, num_heads: int, causal: bool = False, num_alibi_heads: Optional[int] = None,
                 factor: Optional[float] = None, train_len: Optional[int] = None):
        super().__init__(num_heads, causal=causal, num_alibi_heads=num_alibi_heads)
        if (factor is None) == (train_len is None):
            raise ValueError(f"InterpolatedALiBi needs exactly one of factor (fixed) or train_len (dynamic), got "
                             f"factor={factor!r}, train_len={train_len!r}")
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0):
            raise ValueError(f"factor must be a positive number, got {factor!r}")
        if train_len is not None and (isinstance(train_len, bool) or not isinstance(train_len, int)
                                      or train_len <= 0):
            raise ValueError(f"train_len must be a positive int, got {train_len!r}")
        self.factor = None if factor is None else float(factor)
        self.train_len = train_len

    def extra_repr(self) -> str:
        mode = f"factor={self.factor:g}" if self.factor is not None else f"train_len={self.train_len}"
        return super().extra_repr() + ", " + mode

    def interpolation_scale(self, nk: int) -> float:
        return alibi_interpolation_scale(nk, self.factor, self.train_len)

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        b = super().bias(q, k, pos, scale)
        s = self.interpolation_scale(k.shape[-2])
        return b if s == 1.0 else b / s                                          # new tensor: the cache stays intact

    def bias_rows(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float, start: int) -> Tensor:
        b = super().bias_rows(q, k, pos, scale, start)
        s = self.interpolation_scale(k.shape[-2])                                # from all keys, as `bias`
        return b if s == 1.0 else b / s

    def bias_table(self, n: int, device=None) -> Tensor:
        t = super().bias_table(n, device)
        s = self.interpolation_scale(n)
        return t if s == 1.0 else t / s


# the training length comes from the model (``max_len``); the scale follows the key count of each call, so a KV cache
# step and a full forward of the same length differ beyond it (not causal_ok), and so do shifted windows
@register_pe("alibi_interp_dynamic", positions="1d", paper="Al-Khateeb et al., Position Interpolation Improves "
             "ALiBi Extrapolation, arXiv:2310.13017 (BTLM / JAIS alibi_scaling train_seq_len)",
             builds=InterpolatedALiBi, geometry={"train_len": "max_len"})
def alibi_interp_dynamic(num_heads: int, train_len: int, causal: bool = False,
                         num_alibi_heads: Optional[int] = None) -> InterpolatedALiBi:
    """Dynamic interpolated ALiBi: slopes divided by ``nk / train_len`` once the keys outnumber ``train_len``."""
    return InterpolatedALiBi(num_heads, causal=causal, num_alibi_heads=num_alibi_heads, train_len=train_len)
