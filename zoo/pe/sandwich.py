"""Sandwich: Chi, Fan, Rudnicky & Ramadge, "Dissecting Transformer Length Extrapolation via the Lens of Receptive
Field Analysis", ACL 2023 (arXiv 2212.10356).  Reference implementation: NVIDIA NeMo
``SandwichRelativePositionEmbedding`` (``megatron/position_embedding/sandwich_relative_position_embedding.py``).

The inner product of two sinusoidal position embeddings, shifted to 0 at distance 0 and compressed per head as
ALiBi's slopes, added to the scaled logits; parameter-free::

    bias[h, i, j] = (sum_{t=1..d/2} cos((j - i) * w_t) - d/2) / (8 * (h + 1) / H)        w_t = 10000^(-2t / d)

``d`` is ``head_dim`` (NeMo's ``hidden_size``: "hidden size per attention head"); ``t`` runs 1..d/2 as in NeMo.  The
bias is even in ``j - i``, at most 0, and 0 on the diagonal; queries are the last ``nq`` keys (KV cache) and
``pos.ids`` (floats allowed) replace the token indices when given.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..positions import Positions
from .base import PositionalEncoding
from .registry import register_pe
from .relative import check_table_length, query_key_positions, toeplitz_offsets

__all__ = ["Sandwich"]


@register_pe("sandwich", positions="1d", paper="Chi et al., Dissecting Transformer Length Extrapolation via the "
             "Lens of Receptive Field Analysis, ACL 2023, arXiv:2212.10356", causal_ok=True, relative=True)
class Sandwich(PositionalEncoding):
    """Sandwich relative bias (Chi et al., ACL 2023) on the ``bias`` hook.

    Args:
        num_heads: heads of the attention it serves (head ``h`` divides by ``8 (h + 1) / num_heads``).
        head_dim: ``d``, the width of the sinusoids whose inner product forms the bias (even).
    """

    bias_from_positions_only = True

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        for name, v in (("num_heads", num_heads), ("head_dim", head_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (d/2 sinusoid frequencies), got {head_dim}")
        self.num_heads, self.head_dim = num_heads, head_dim

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"

    def bias_rows(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float, start: int) -> Tensor:
        # q [b, h, c, d]: the queries at key indices start .. start + c - 1; k [b, h, nk, d]
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q has {q.shape[1]} heads but Sandwich was built with num_heads={self.num_heads}")
        pi, pj = query_key_positions(pos, q.shape[-2], k.shape[-2], q.device, by="Sandwich", start=start)
        rel = (pj - pi).float()                                                  # [b?, c, nk]
        b = self._from_rel(rel, q.device)                                        # [h, b?, c, nk]
        b = b.movedim(0, -3) if b.ndim == 4 else b                               # [b?, h, c, nk]
        return b if b.ndim == 4 else b[None]

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, nq, d], k [b, h, nk, d]
        return self.bias_rows(q, k, pos, scale, k.shape[-2] - q.shape[-2])

    def bias_table(self, n: int, device=None) -> Tensor:
        """``[h, 2n - 1]`` float32: the bias at key - query offset ``o - n + 1`` (`PositionalEncoding.bias_table`)."""
        check_table_length(n, "Sandwich")
        return self._from_rel(toeplitz_offsets(n, device).float(), device)

    def _from_rel(self, rel: Tensor, device) -> Tensor:
        """``rel = pos_k - pos_q`` float ``[...]`` -> bias ``[h, ...]``."""
        d = self.head_dim
        t = torch.arange(1, d // 2 + 1, device=device, dtype=torch.float32)
        w = 10000.0 ** (-2.0 * t / d)                                            # [d/2]
        inner = torch.cos(rel[..., None] * w).sum(-1) - d / 2                    # [...]
        heads = torch.arange(1, self.num_heads + 1, device=device, dtype=torch.float32)
        compress = (heads * 8.0 / self.num_heads).view(-1, *([1] * rel.ndim))   # [h, 1..]
        return inner.unsqueeze(0) / compress
