"""NoPE: no positional encoding (Kazemnejad et al., "The Impact of Positional Encoding on Length Generalization in
Transformers", NeurIPS 2023).  A causal decoder can infer positions from the mask alone; an encoder cannot.

`NoPE` overrides no hook, so the attention runs its plain fused path.  It exists so that model code can say
``pe="nope"`` through the same factory as every other encoding.
"""
from __future__ import annotations

from .base import PositionalEncoding
from .registry import register_pe

__all__ = ["NoPE"]

# the keyword arguments model code passes to every encoding; NoPE accepts and ignores them
_IGNORED = ("num_heads", "head_dim", "dim", "causal")


@register_pe("nope", positions="1d", paper="Kazemnejad et al., The Impact of Positional Encoding on Length "
             "Generalization in Transformers, NeurIPS 2023, arXiv:2305.19466", causal_ok=True, relative=True)
class NoPE(PositionalEncoding):
    """No positional encoding: every hook is the identity.

    Accepts (and ignores) ``num_heads``, ``head_dim``, ``dim`` and ``causal`` so that ``zoo.pe.create("nope", ...)``
    takes the same arguments as the other kinds; anything else is a ValueError."""

    def __init__(self, **kwargs):
        super().__init__()
        unknown = sorted(set(kwargs) - set(_IGNORED))
        if unknown:
            raise ValueError(f"NoPE got unexpected argument(s) {', '.join(unknown)}; it accepts only "
                             f"{', '.join(_IGNORED)} (ignored)")
