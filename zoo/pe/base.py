"""The positional-encoding contract.

A `PositionalEncoding` overrides only the hooks it uses; which ones it overrides says what kind it is:

    embed(x, pos)            -> x             add to token features          (APE, LayoutLM, PEG)
    rotate(q, k, pos)        -> (q, k)        rotate queries / keys           (RoPE family, HiRoPE, V2PE)
    bias(q, k, pos, scale)   -> [b|1, h|1, nq, nk] added to the scaled logits (ALiBi, T5, KERPLE, iRPE-q/k)
    value(attn, pos)         -> [b, h, nq, d]  added to the attention output, computed from the post-softmax
                                               weights (iRPE on values); forces the slow attention path

Tensor layout inside attention: q, k, v are ``[b, h, n, d]``.
"""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn

from ..positions import Positions

__all__ = ["PositionalEncoding", "overrides"]


class PositionalEncoding(nn.Module):
    """Base class. Subclasses override a subset of `embed`, `rotate`, `bias`, `value`."""

    def embed(self, x: Tensor, pos: Optional[Positions]) -> Tensor:
        return x

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        return q, k

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Optional[Tensor]:
        return None

    def value(self, attn: Tensor, pos: Optional[Positions]) -> Optional[Tensor]:
        return None

    # ---- introspection ------------------------------------------------------------------------------------
    @property
    def has_embed(self) -> bool:
        return overrides(self, "embed")

    @property
    def has_rotate(self) -> bool:
        return overrides(self, "rotate")

    @property
    def has_bias(self) -> bool:
        return overrides(self, "bias")

    @property
    def needs_weights(self) -> bool:
        """True when the encoding reads the attention weights (then SDPA cannot be used)."""
        return overrides(self, "value")


def overrides(pe: nn.Module, hook: str) -> bool:
    """Whether ``pe`` implements ``hook`` itself rather than inheriting the identity from the base class."""
    impl = getattr(type(pe), hook, None)
    return impl is not None and impl is not getattr(PositionalEncoding, hook)
