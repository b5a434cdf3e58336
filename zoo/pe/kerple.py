"""KERPLE: Chi, Fan, Ramadge & Rudnicky, "KERPLE: Kernelized Relative Positional Embedding for Length
Extrapolation", NeurIPS 2022 (official code: chijames/KERPLE, ``megatron/mpu/layers.py``: ``ParallelKerpleLog``,
``ParallelKerplePower``).

Conditionally positive definite kernels turned into logit biases, with per-head learnable ``p, a`` (``[h, 1, 1]``
parameters ``bias_p``, ``bias_a`` as in the official code, so its weights load by name)::

    log:    bias[h, i, j] = -p_h * log(1 + a_h * |i - j|)        p_h, a_h >= 0.01
    power:  bias[h, i, j] = -a_h * |i - j| ^ p_h                  a_h >= 0.01, 0.01 <= p_h <= 2

added to logits already scaled by ``1/sqrt(d)``.  Initialisation as the official code: ``p ~ U(0, 2)``,
``a ~ U(0, 1)``.

Causal vs bidirectional: the official code is causal only (distance ``tril(i - j)``: 0 above the diagonal, which
the causal mask removes).  ``causal=False`` is our symmetric version with ``|i - j|`` (the kernels are symmetric).

Clamping: the official code clamps the parameters *in place* every forward (``bias_p.data.clamp_(min=eps)``).  Here
the clamp is functional and straight-through: the forward uses the clamped value and the gradient is taken at that
value as if unclamped (``x + (clamp(x) - x).detach()``), which is exactly the gradient the official code computes,
without mutating a parameter inside forward (that breaks autograd when the parameter is reused, and plain
``clamp`` would freeze a parameter that left the range: its gradient would be 0).  The stored parameter may lie
outside the range; `project_` copies the clamped values back if one wants the official state.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from typing import Optional

import torch
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe
from .relative import check_table_length, query_key_positions, toeplitz_offsets

__all__ = ["kerple_log_bias", "kerple_power_bias", "kerple_distance", "KerpleLog", "KerplePower"]

EPS = 0.01


def _clamp_st(x: Tensor, lo: Optional[float], hi: Optional[float]) -> Tensor:
    """Clamp in the forward, identity gradient (straight-through)."""
    return x + (x.clamp(lo, hi) - x).detach()


def kerple_distance(pi: Tensor, pj: Tensor, causal: bool) -> Tensor:
    """float32 distance: causal ``max(i - j, 0)`` (official ``tril``), bidirectional ``|i - j|``."""
    diff = pi.to(torch.float32) - pj.to(torch.float32)
    return diff.clamp(min=0) if causal else diff.abs()


def kerple_log_bias(distance: Tensor, p: Tensor, a: Tensor) -> Tensor:
    """``-p * log(1 + a * distance)``; ``p, a`` broadcast against ``distance`` (e.g. ``[h, 1, 1]``)."""
    return -p * torch.log1p(a * distance)


def kerple_power_bias(distance: Tensor, p: Tensor, a: Tensor) -> Tensor:
    """``-a * distance ** p``; ``p, a`` broadcast against ``distance`` (e.g. ``[h, 1, 1]``)."""
    return -a * distance.pow(p)


class _Kerple(PositionalEncoding, ABC):
    kernel = ""
    p_max: Optional[float] = None
    bias_from_positions_only = True

    def __init__(self, num_heads: int, causal: bool = True, eps: float = EPS):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if not (isinstance(eps, (int, float)) and 0 < eps < 1):
            raise ValueError(f"eps must be in (0, 1), got {eps!r}")
        self.num_heads, self.causal, self.eps = num_heads, bool(causal), float(eps)
        self.bias_p = nn.Parameter(torch.rand(num_heads, 1, 1) * 2.0)             # U(0, 2)
        self.bias_a = nn.Parameter(torch.rand(num_heads, 1, 1))                   # U(0, 1)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, kernel={self.kernel!r}, causal={self.causal}"

    def effective_params(self):
        """The clamped ``(p, a)`` ``[h, 1, 1]`` float32 used in the forward (straight-through gradients)."""
        p = _clamp_st(self.bias_p.float(), self.eps, self.p_max)
        a = _clamp_st(self.bias_a.float(), self.eps, None)
        return p, a

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the stored parameters into their range in place (the official per-forward state)."""
        self.bias_p.clamp_(self.eps, self.p_max)
        self.bias_a.clamp_(min=self.eps)

    @abstractmethod
    def _kernel(self, dist: Tensor, p: Tensor, a: Tensor) -> Tensor:
        """The bias ``[..., h, c, nk]`` from distances and the clamped per-head ``p``, ``a``."""

    @property
    def bias_floats_per_pair(self) -> int:
        return 3 * self.num_heads + 1                                            # dist, a*dist, log1p, -p*...

    def bias_rows(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float, start: int) -> Tensor:
        # q [b, h, c, d]: the queries at key indices start .. start + c - 1; k [b, h, nk, d]
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q has {q.shape[1]} heads but {type(self).__name__} was built with "
                             f"num_heads={self.num_heads}")
        name = type(self).__name__
        pi, pj = query_key_positions(pos, q.shape[-2], k.shape[-2], q.device, by=name, start=start)
        with no_autocast(q.device):
            dist = kerple_distance(pi, pj, self.causal).unsqueeze(-3)            # [b?, 1, c, nk]
            p, a = self.effective_params()                                       # [h, 1, 1]
            out = self._kernel(dist, p, a)                                       # [b?, h, c, nk]
        return out if out.ndim == 4 else out[None]

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, nq, d], k [b, h, nk, d]
        return self.bias_rows(q, k, pos, scale, k.shape[-2] - q.shape[-2])

    def bias_table(self, n: int, device=None) -> Tensor:
        """``[h, 2n - 1]`` float32: the bias at key - query offset ``o - n + 1`` (`PositionalEncoding.bias_table`)."""
        check_table_length(n, type(self).__name__)
        rel = toeplitz_offsets(n, device)                                        # j - i
        with no_autocast(torch.device("cpu" if device is None else device)):
            dist = kerple_distance(torch.zeros_like(rel), rel, self.causal)      # i - j, clamped or |.|
            p, a = self.effective_params()                                       # [h, 1, 1]
            return self._kernel(dist[None, None], p, a)[:, 0]                    # [h, 2n - 1]


@register_pe("kerple_log", positions="1d", paper="Chi et al., KERPLE: Kernelized Relative Positional Embedding for "
             "Length Extrapolation, NeurIPS 2022, arXiv:2205.09921", causal_ok=True, relative=True)
class KerpleLog(_Kerple):
    """KERPLE logarithmic kernel ``-p * log(1 + a |i - j|)`` (the variant the paper recommends).

    Args:
        num_heads: heads of the attention it serves.
        causal: official form (True); False = our symmetric ``|i - j|`` version.
        eps: lower clamp of ``p`` and ``a`` (0.01 officially).
    """

    kernel = "log"

    def _kernel(self, dist, p, a):
        return kerple_log_bias(dist, p, a)


@register_pe("kerple_power", positions="1d", paper="Chi et al., KERPLE: Kernelized Relative Positional Embedding for "
             "Length Extrapolation, NeurIPS 2022, arXiv:2205.09921", causal_ok=True, relative=True)
class KerplePower(_Kerple):
    """KERPLE power kernel ``-a |i - j| ^ p``, ``p`` in ``[eps, 2]`` (the official multiplicative ``exp`` factor,
    unused in its released configs, is not implemented).

    Args:
        num_heads, causal, eps: as `KerpleLog`.
    """

    kernel = "power"
    p_max = 2.0

    def _kernel(self, dist, p, a):
        return kerple_power_bias(dist, p, a)
