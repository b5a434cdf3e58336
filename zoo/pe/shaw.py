"""Relative position representations: Shaw, Uszkoreit & Vaswani, "Self-Attention with Relative Position
Representations", NAACL 2018 (reference implementation: tensor2tensor ``dot_product_attention_relative``).

Relative distances are clipped to ``k`` (``max_relative_position``) and index two learned tables of ``2k + 1`` rows,
shared by all heads (as in the paper, section 3.3)::

    idx(i, j) = clip(pos_j - pos_i, -k, k) + k
    logits    e_ij = q_i . (k_j + a^K[idx(i, j)]) / sqrt(d)        (eq. 4)   -> bias hook
    output    z_i  = sum_j w_ij (v_j + a^V[idx(i, j)])              (eq. 3)   -> value hook

Neither term builds an ``[n, n, d]`` tensor (the paper's section 3.3 trick, also iRPE's):

* key term: ``lut = (q / sqrt(d)) @ a^K.T`` ``[b, h, nq, 2k+1]``, then a gather along the last axis;
* value term: the weights are summed per relative bucket (``scatter_add`` -> ``[b, h, nq, 2k+1]``), then one
  matmul with ``a^V``.

The value term reads the post-softmax weights, so `ShawRPE` with ``values=True`` (the default, a
`ShawRPEWithValues`) sends the attention down its slow path; ``values=False`` keeps the fused SDPA path.
Both terms are computed in float32 whatever the autocast dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe
from .relative import query_key_positions

__all__ = ["shaw_relative_index", "ShawRPE", "ShawRPEWithValues"]


def shaw_relative_index(relative_position: Tensor, max_relative_position: int) -> Tensor:
    """``clip(relative_position, -k, k) + k`` as long (floats are rounded first): rows of the ``[2k+1, d]`` tables."""
    if isinstance(max_relative_position, bool) or not isinstance(max_relative_position, int) \
            or max_relative_position < 0:
        raise ValueError(f"max_relative_position must be an int >= 0, got {max_relative_position!r}")
    rel = relative_position
    if rel.is_floating_point():
        rel = rel.round()
    k = max_relative_position
    return rel.long().clamp(-k, k) + k


@register_pe("shaw", positions="1d", paper="Shaw et al., Self-Attention with Relative Position Representations, "
             "NAACL 2018, arXiv:1803.02155", causal_ok=True, relative=True)
class ShawRPE(PositionalEncoding):
    """Shaw et al. (2018) relative position representations.

    Args:
        head_dim: ``d`` of q/k/v (the tables are ``[2k+1, d]``, shared across heads as in the paper).
        max_relative_position: clipping distance ``k`` (16 by default, the value of the paper's main experiments;
            its Table 3 shows little change for ``k >= 2``).
        values: also add ``a^V`` to the values (value hook, slow attention path).  Returns a `ShawRPEWithValues`.
        init_std: std of the normal initialisation of the tables.

    Parameters: ``relative_keys`` ``[2k+1, d]`` (a^K), ``relative_values`` ``[2k+1, d]`` (a^V, only when
    ``values``).  Positions: ``pos.ids`` (``[b, nk]`` or ``[nk]``) or token indices; queries = the last ``nq`` keys
    (KV cache).  Distances are signed, so the same tables serve bidirectional and causal attention (the mask is the
    attention's business).
    """

    def __new__(cls, *args, **kwargs):
        if cls is ShawRPE:
            flag = kwargs.get("values", args[2] if len(args) > 2 else True)
            if flag:
                cls = ShawRPEWithValues
        return super().__new__(cls)

    def __init__(self, head_dim: int, max_relative_position: int = 16, values: bool = True, init_std: float = 0.02):
        super().__init__()
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        if isinstance(max_relative_position, bool) or not isinstance(max_relative_position, int) \
                or max_relative_position < 0:
            raise ValueError(f"max_relative_position must be an int >= 0, got {max_relative_position!r}")
        if not init_std >= 0:
            raise ValueError(f"init_std must be >= 0, got {init_std!r}")
        if isinstance(self, ShawRPEWithValues) and not values:
            raise ValueError("ShawRPEWithValues needs values=True (use ShawRPE(..., values=False) for keys only)")
        self.head_dim, self.max_relative_position, self.values = head_dim, max_relative_position, bool(values)
        rows = 2 * max_relative_position + 1
        self.relative_keys = nn.Parameter(torch.randn(rows, head_dim) * init_std)
        self.relative_values = nn.Parameter(torch.randn(rows, head_dim) * init_std) if self.values else None

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_relative_position={self.max_relative_position}, values={self.values}"

    def index(self, nq: int, nk: int, pos: Optional[Positions], device=None) -> Tensor:
        """Table rows ``[b?, nq, nk]`` (long) for queries = the last ``nq`` of ``nk`` keys."""
        pi, pj = query_key_positions(pos, nq, nk, device, by="ShawRPE")
        return shaw_relative_index(pj - pi, self.max_relative_position)

    def _check(self, x: Tensor, what: str) -> None:
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"{what} has head dim {x.shape[-1]} but ShawRPE was built with head_dim={self.head_dim}")

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, nq, d], k [b, h, nk, d]
        self._check(q, "q")
        b, h, nq, _ = q.shape
        nk = k.shape[-2]
        idx = self.index(nq, nk, pos, q.device)                                  # [b?, nq, nk]
        if idx.ndim == 3:
            if idx.shape[0] not in (1, b):
                raise ValueError(f"pos.ids has batch {idx.shape[0]} but q has batch {b}")
            idx = idx[:, None]                                                   # [b, 1, nq, nk]
        with no_autocast(q.device):
            # (q * scale) @ a^K.T computed as q @ (a^K * scale).T: the scale touches the small table
            lut = q.float() @ (self.relative_keys.float() * scale).t()           # [b, h, nq, 2k+1]
            return torch.gather(lut, -1, idx.expand(b, h, nq, nk))               # [b, h, nq, nk]


class ShawRPEWithValues(ShawRPE):
    """`ShawRPE` with the value term (value hook): the attention takes its weights-reading path."""

    def value(self, attn: Tensor, pos: Optional[Positions]) -> Tensor:
        # attn [b, h, nq, nk] post-softmax weights
        b, h, nq, nk = attn.shape
        idx = self.index(nq, nk, pos, attn.device)                               # [b?, nq, nk]
        if idx.ndim == 3:
            idx = idx[:, None]                                                   # [b, 1, nq, nk]
        rows = 2 * self.max_relative_position + 1
        with no_autocast(attn.device):
            # sum the weights that share a relative bucket, then one matmul: never an [nq, nk, d] gather
            acc = attn.new_zeros(b, h, nq, rows, dtype=torch.float32)
            acc = acc.scatter_add(-1, idx.expand(b, h, nq, nk), attn.float())   # [b, h, nq, 2k+1]
            out = acc @ self.relative_values.float()                             # [b, h, nq, d]
        return out.to(attn.dtype)
