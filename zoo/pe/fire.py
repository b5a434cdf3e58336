"""FIRE: Li, Xiong, Grangier et al., "Functional Interpolation for Relative Positions Improves Long Context
Transformers", ICLR 2024 (arXiv 2310.04418).  Paper only: no official code; implemented from the paper's equations.

A learned function of the *normalised* relative distance, one output per head::

    bias[h, i, j] = f_theta( psi(i - j) / psi(max(L, i)) )[h]          (causal, j <= i; paper eq. (3)-(4))
    psi(x)        = log(c * x + 1)                                     (log transform, c > 0 learnable)
    f_theta       = Linear(1, width) -> ReLU -> Linear(width, heads)
    L             = |L_multiplier| * init_L                            (learnable threshold)

Dividing by ``psi(max(L, i))`` is the "progressive interpolation": inside the threshold the input depends on
``i - j`` only; beyond it every query sees inputs in ``[0, 1]``, whatever the context length.

Defaults: ``init_c = 0.1``, ``init_L = 512``, ``width = 32`` (our reading of the paper's appendix; they are not
verified against released code), ``eps = 1e-6`` in the denominator; ``c`` and ``L`` are learnable (``init_L`` is a
buffer, ``L_multiplier`` a parameter initialised to 1, so the threshold trains at a useful rate).  ``|c|`` is used so
that ``psi`` stays defined if ``c`` crosses zero.

Position of the query.  In the paper ``i`` is the query's index in the sequence (number of tokens before it).  With
``pos.ids`` we use ``i - first`` where ``first`` is the smallest key position, so that shifting every position
leaves the bias unchanged (it equals the paper whenever positions start at 0, KV caches included).

Bidirectional variant (ours, not in the paper): ``psi(|i - j|) / psi(max(L, last - first))``, normalising by the
extent of the whole visible context instead of the causal prefix.

The MLP runs on ``[b?, nq, nk, 1]`` inputs (``nq * nk * width`` activations): the cost of a learned bias; all of it in
float32 whatever the autocast dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe
from .relative import check_table_length, query_key_positions, toeplitz_offsets

__all__ = ["fire_inputs", "FIRE"]


def fire_inputs(pi: Tensor, pj: Tensor, c: Tensor, L: Tensor, causal: bool = True, eps: float = 1e-6) -> Tensor:
    """The MLP input ``psi(dist) / (psi(max(L, ctx)) + eps)`` float32, broadcast of ``pi [.., nq, 1]`` and
    ``pj [.., 1, nk]``.

    ``dist = max(i - j, 0)`` and ``ctx = i - first`` (causal) or ``dist = |i - j|`` and ``ctx = last - first``
    (bidirectional), ``first``/``last`` the smallest/largest key position."""
    pi, pj = pi.to(torch.float32), pj.to(torch.float32)
    first = pj.amin(dim=-1, keepdim=True)                                        # [.., 1, 1]
    if causal:
        dist = (pi - pj).clamp(min=0)
        ctx = pi - first                                                         # [.., nq, 1]
    else:
        dist = (pi - pj).abs()
        ctx = pj.amax(dim=-1, keepdim=True) - first                              # [.., 1, 1]
    return _psi_ratio(dist, ctx, c, L, eps)


def _psi_ratio(dist: Tensor, ctx: Tensor, c: Tensor, L: Tensor, eps: float) -> Tensor:
    """``log(|c| dist + 1) / (log(|c| max(ctx, L) + 1) + eps)`` in float32."""
    c = c.to(torch.float32).abs()
    norm = torch.maximum(ctx, L.to(torch.float32))
    return torch.log1p(c * dist) / (torch.log1p(c * norm) + eps)


@register_pe("fire", positions="1d", paper="Li et al., Functional Interpolation for Relative Positions Improves Long "
             "Context Transformers, ICLR 2024, arXiv:2310.04418", causal_ok=True)
class FIRE(PositionalEncoding):
    """FIRE relative bias on the ``bias`` hook.

    Args:
        num_heads: heads of the attention it serves (MLP outputs).
        mlp_width: hidden width of ``f_theta`` (32).
        init_c: initial ``c`` of ``psi(x) = log(c x + 1)`` (0.1).
        init_L: initial threshold ``L`` of the progressive interpolation (512).
        causal: the paper's causal form (True) or our bidirectional variant (module docstring).
        eps: added to the normaliser.

    Parameters: ``mlp.0`` (Linear 1 -> width), ``mlp.2`` (Linear width -> heads), ``c``, ``L_multiplier``; buffer
    ``init_L``.  ``bias`` returns float32 ``[b|1, h, nq, nk]``; queries = the last ``nq`` keys.
    """

    bias_from_positions_only = True

    def __init__(self, num_heads: int, mlp_width: int = 32, init_c: float = 0.1, init_L: float = 512.0,
                 causal: bool = True, eps: float = 1e-6):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if isinstance(mlp_width, bool) or not isinstance(mlp_width, int) or mlp_width <= 0:
            raise ValueError(f"mlp_width must be a positive int, got {mlp_width!r}")
        if not (isinstance(init_c, (int, float)) and init_c > 0):
            raise ValueError(f"init_c must be a positive number, got {init_c!r}")
        if not (isinstance(init_L, (int, float)) and init_L > 0):
            raise ValueError(f"init_L must be a positive number, got {init_L!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        self.num_heads, self.mlp_width, self.causal, self.eps = num_heads, mlp_width, bool(causal), float(eps)
        self.mlp = nn.Sequential(nn.Linear(1, mlp_width), nn.ReLU(), nn.Linear(mlp_width, num_heads))
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.L_multiplier = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("init_L", torch.tensor(float(init_L)))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, mlp_width={self.mlp_width}, causal={self.causal}"

    @property
    def threshold(self) -> Tensor:
        """The current ``L`` (float32 scalar)."""
        return self.L_multiplier.float().abs() * self.init_L.float()

    def mlp_f32(self, x: Tensor) -> Tensor:
        """``f_theta`` in float32: ``[..., 1] -> [..., heads]``."""
        l0, l2 = self.mlp[0], self.mlp[2]
        hdn = F.relu(F.linear(x, l0.weight.float(), l0.bias.float()))
        return F.linear(hdn, l2.weight.float(), l2.bias.float())

    @property
    def bias_floats_per_pair(self) -> int:
        return 2 * self.mlp_width + 2 * self.num_heads + 2                       # MLP activations dominate

    def bias_rows(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float, start: int) -> Tensor:
        # q [b, h, c, d]: the queries at key indices start .. start + c - 1; k [b, h, nk, d]
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q has {q.shape[1]} heads but FIRE was built with num_heads={self.num_heads}")
        pi, pj = query_key_positions(pos, q.shape[-2], k.shape[-2], q.device, by="FIRE", start=start)
        if pj.shape[-1] == 0:                                                    # no keys: nothing to normalise by
            return torch.zeros(1, self.num_heads, q.shape[-2], 0, device=q.device)
        with no_autocast(q.device):
            # the normaliser reads every key (first / last position), so rows equal those of the full bias
            x = fire_inputs(pi, pj, self.c, self.threshold, self.causal, self.eps)   # [b?, c, nk]
            out = self.mlp_f32(x.unsqueeze(-1)).movedim(-1, -3)                    # [b?, h, c, nk]
        return out if out.ndim == 4 else out[None]

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, nq, d], k [b, h, nk, d]
        return self.bias_rows(q, k, pos, scale, k.shape[-2] - q.shape[-2])

    def bias_table(self, n: int, device=None) -> Optional[Tensor]:
        """``[h, 2n - 1]`` float32 at key - query offset ``o - n + 1`` (`PositionalEncoding.bias_table`), or None.

        Bidirectional: the normaliser ``psi(max(L, n - 1))`` is the same for every query, so the bias depends on
        ``|i - j|`` alone.  Causal: ``psi(max(L, i))`` is the same for every query only while ``n - 1 <= L``;
        beyond the threshold the bias is not Toeplitz and this returns None."""
        check_table_length(n, "FIRE")
        L = self.threshold
        if self.causal and n - 1 > float(L.detach()):
            return None
        rel = toeplitz_offsets(n, device)                                        # j - i
        with no_autocast(torch.device("cpu" if device is None else device)):
            rel = rel.to(torch.float32)
            dist = (-rel).clamp(min=0) if self.causal else rel.abs()             # i - j (causal) or |i - j|
            # causal: every query's ctx = i <= n - 1 <= L, so max(ctx, L) = L; bidirectional: ctx = n - 1
            ctx = torch.full((), 0.0 if self.causal else float(n - 1), device=rel.device)
            x = _psi_ratio(dist, ctx, self.c, L, self.eps)                       # [2n - 1]
            return self.mlp_f32(x[:, None]).t()                                  # [h, 2n - 1]
