"""CoPE, contextual position encoding: Golovneva, Wang, Weston & Sukhbaatar, "Contextual Position Encoding:
Learning to Count What's Important", 2024 (arXiv 2405.18719; implemented from the code in the paper's appendix).

Positions are counted by the content: a query decides which earlier keys "count" with a sigmoid gate, and the
position of key ``j`` seen from query ``i`` is the number of counted keys between them::

    gates[i, j] = sigmoid(q_i . k_j / sqrt(d))          0 for masked keys (j > i, padding)
    p[i, j]     = sum_{t = j..i} gates[i, t]             (reverse cumulative sum), clamped to npos_max - 1
    z[i, m]     = q_i . E[:, m]                          E = pos_emb [d, npos_max] (zero init, shared by heads)
    e[i, j]     = z[i, ceil p] * (p - floor p) + z[i, floor p] * (1 - (p - floor p))   (linear interpolation)
    logits     += e

As the appendix code, ``q`` in ``z = q @ E`` is the unscaled query and the gates use the scaled logits.

Cost.  CoPE needs the attention logits, which the attention computes only after the bias hook; so the hook
computes ``q k^T / sqrt(d)`` itself (in float32): one extra ``[b, h, nq, nk]`` GEMM plus a cumulative sum and two
gathers over ``[b, h, nq, nk]`` per layer; the attention then still runs its fused path with the bias.

Causal only (as the paper): keys after the query get gate 0 and position 0, so use CoPE with a causal attention.
Positions do not come from ``pos.ids`` (they are contextual); ``pos.mask`` zeroes the gates of padded keys.  With a
KV cache the queries are the last ``nq`` keys.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe

__all__ = ["cope_positions", "cope_interpolate", "CoPE"]


def cope_positions(logits: Tensor, npos_max: int, keep: Optional[Tensor] = None) -> Tensor:
    """Contextual positions ``p`` ``[..., nq, nk]`` from scaled logits ``[..., nq, nk]``: ``sigmoid`` gates (0 where
    ``keep`` is False), reverse cumulative sum along the keys, clamped to ``npos_max - 1``."""
    gates = torch.sigmoid(logits)
    if keep is not None:
        gates = gates.masked_fill(~keep, 0.0)
    return gates.flip(-1).cumsum(-1).flip(-1).clamp(max=npos_max - 1)


def cope_interpolate(z: Tensor, p: Tensor) -> Tensor:
    """``z [..., nq, npos]`` (``q @ pos_emb``) at fractional positions ``p [..., nq, nk]`` -> ``[..., nq, nk]``."""
    lo = p.floor()
    w = p - lo
    z_hi = torch.gather(z, -1, p.ceil().long())
    z_lo = torch.gather(z, -1, lo.long())
    return z_hi * w + z_lo * (1 - w)


@register_pe("cope", positions="1d", paper="Golovneva et al., Contextual Position Encoding: Learning to Count What's "
             "Important, arXiv:2405.18719", causal_ok=True, relative=True)
class CoPE(PositionalEncoding):
    """Contextual position encoding on the ``bias`` hook (computes ``q.k`` itself; see the module docstring).

    Args:
        head_dim: ``d``.
        npos_max: number of position embeddings (positions are clamped to ``npos_max - 1``); 16 is x-transformers'
            default ``cope_max_pos``; the paper tunes it per task.

    Parameter ``pos_emb`` ``[1, head_dim, npos_max]``, zero-initialised, shared by all heads (the appendix layout).
    """

    def __init__(self, head_dim: int, npos_max: int = 16):
        super().__init__()
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        if isinstance(npos_max, bool) or not isinstance(npos_max, int) or npos_max < 1:
            raise ValueError(f"npos_max must be an int >= 1, got {npos_max!r}")
        self.head_dim, self.npos_max = head_dim, npos_max
        self.pos_emb = nn.Parameter(torch.zeros(1, head_dim, npos_max))

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, npos_max={self.npos_max}"

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, nq, d], k [b, h, nk, d]
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"q has head dim {q.shape[-1]} but CoPE was built with head_dim={self.head_dim}")
        nq, nk = q.shape[-2], k.shape[-2]
        if nq > nk:
            raise ValueError(f"CoPE: q has {nq} positions but k only {nk}: queries must be the last nq of the keys")
        keep = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(diagonal=nk - nq)   # [nq, nk]
        if pos is not None and pos.mask is not None:
            if pos.mask.shape[-1] != nk:
                raise ValueError(f"CoPE: pos.mask has {pos.mask.shape[-1]} positions but k has {nk}")
            keep = keep & pos.mask.to(device=q.device, dtype=torch.bool)[:, None, None, :]  # [b, 1, nq, nk]
        with no_autocast(q.device):
            qf = q.float()
            logits = (qf @ k.float().transpose(-2, -1)) * scale                   # [b, h, nq, nk]
            p = cope_positions(logits, self.npos_max, keep)                       # [b, h, nq, nk]
            z = qf @ self.pos_emb.float()                                         # [b, h, nq, npos]
            return cope_interpolate(z, p)                                         # [b, h, nq, nk]
