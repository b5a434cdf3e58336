"""The positional-encoding contract.

A `PositionalEncoding` overrides only the hooks it uses; which ones it overrides says what kind it is:

    embed(x, pos)            -> x             add to token features          (APE, LayoutLM, PEG)
    rotate(q, k, pos)        -> (q, k)        rotate queries / keys           (RoPE family, HiRoPE, V2PE)
    bias(q, k, pos, scale)   -> [b|1, h|1, nq, nk] added to the scaled logits (ALiBi, T5, KERPLE, iRPE-q/k)
    bias_rows(q, k, pos, scale, start)
                             -> [b|1, h|1, c, nk] rows of that bias for a block of c queries (optional; lets the
                                attention chunk long sequences without ever holding the whole bias). Contract:
                                equals bias(q_all, k, pos, scale)[..., start - (nk - nq_all) + i, :] for the c
                                queries q at key indices start .. start + c - 1. The base class does not define
                                it: encodings without it get the full bias once, sliced per chunk
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

    #: float32 values per (query, key) pair that ``bias_rows`` builds, all heads together (the bias itself and the
    #: temporaries autograd keeps); sizes the attention's query chunks.  None: about ``2 * num_heads``.
    bias_floats_per_pair: Optional[int] = None

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
    def has_bias_rows(self) -> bool:
        """True when `bias_rows` is implemented by the class that also defines `bias` (or a subclass of it): a
        subclass that changes `bias` without updating `bias_rows` loses the row form instead of returning rows of
        the parent's bias."""
        rows_cls, bias_cls = _defined_in(type(self), "bias_rows"), _defined_in(type(self), "bias")
        return rows_cls is not None and bias_cls is not None and issubclass(rows_cls, bias_cls)

    @property
    def needs_weights(self) -> bool:
        """True when the encoding reads the attention weights (then SDPA cannot be used)."""
        return overrides(self, "value")


def overrides(pe: nn.Module, hook: str) -> bool:
    """Whether ``pe`` implements ``hook`` itself rather than inheriting the identity from the base class."""
    impl = getattr(type(pe), hook, None)
    return impl is not None and impl is not getattr(PositionalEncoding, hook)


def _defined_in(cls: type, name: str) -> Optional[type]:
    """The class of ``cls``'s MRO whose body defines ``name``."""
    for c in cls.__mro__:
        if name in c.__dict__:
            return c
    return None
