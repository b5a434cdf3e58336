"""PEG, the positional encoding generator of CPVT: Chu et al., "Conditional Positional Encodings for Vision
Transformers", ICLR 2023 (arXiv 2102.10882).  Reference code: Meituan-AutoML/Twins ``gvt.py::PosCNN`` (the CPVT
repository holds only a README) and timm ``twins.py::PosConv`` — same math, same keys, verified in the tests.

A depthwise conv over the patch grid, added back to the tokens (paper Algorithm 1)::

    x [B, P + h*w, C] --split--> prefix [B, P, C]            (cls / registers: bypass the conv)
                                 feat   [B, h*w, C] -> [B, C, h, w]
    feat' = proj(feat) + feat                                (residual only when stride == 1)
    out   = cat(prefix, flatten(feat'))  [B, P + h'*w', C]

``proj = Sequential(Conv2d(C, C, k, stride, k // 2, groups=C, bias=True))``, so the parameters are
``proj.0.weight [C, 1, k, k]`` and ``proj.0.bias [C]`` exactly as Twins/timm.  The encoding is conditioned on the
local neighbourhood, so it runs at any grid size (rectangular too); the zero padding is what lets it tell where
the borders are, i.e. carry absolute position (the paper's zero-padding ablation).  Initialised as Twins: weight
``N(0, sqrt(2 / fan_out))`` with ``fan_out = k*k*C / groups = k*k``, bias 0.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding
from .registry import register_pe

__all__ = ["PEG"]


@register_pe("peg", positions="2d", paper="Chu et al., Conditional Positional Encodings for Vision Transformers, "
             "ICLR 2023, arXiv:2102.10882")
class PEG(PositionalEncoding):
    """Positional Encoding Generator (CPVT) on the ``embed`` hook.

    Args:
        dim: token width ``C`` (the conv is depthwise: ``groups = C``).
        kernel_size: odd kernel size ``k`` (3 in the paper and Twins); padding ``k // 2`` keeps the grid size.
        stride: conv stride; 1 keeps the grid and adds the residual (CPVT). ``stride > 1`` (Twins ``PosCNN(s)``)
            returns the strided grid without residual — the caller must then use the new grid size
            ``ceil(h / s) x ceil(w / s)``.

    ``embed(x, pos)`` needs ``pos.grid_size = (h, w)`` and ``pos.num_prefix``; ``x`` is ``[B, num_prefix + h*w, C]``
    with the grid tokens in row-major order.
    """

    def __init__(self, dim: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int (padding k // 2 keeps the grid), "
                             f"got {kernel_size!r}")
        if not isinstance(stride, int) or stride <= 0:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.dim, self.kernel_size, self.stride = dim, kernel_size, stride
        self.proj = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size, stride, kernel_size // 2, bias=True, groups=dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        conv = self.proj[0]
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
        with torch.no_grad():
            conv.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
            conv.bias.zero_()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, stride={self.stride}"

    def embed(self, x: Tensor, pos: Optional[Positions]) -> Tensor:
        if pos is None or pos.grid_size is None:
            raise ValueError("PEG needs Positions with grid_size (h, w) and num_prefix; got "
                             + ("None" if pos is None else "Positions without grid_size"))
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"PEG(dim={self.dim}) expects tokens [B, N, {self.dim}], got shape {tuple(x.shape)}")
        h, w = pos.grid_size
        npre = pos.num_prefix
        n = x.shape[1]
        if npre + h * w != n:
            raise ValueError(f"PEG: grid {h}x{w} plus {npre} prefix token(s) is {npre + h * w} tokens, "
                             f"but x has {n} tokens")
        if h * w == 0:                                                           # an empty grid: nothing to convolve
            return x
        b, _, c = x.shape
        prefix, feat = x[:, :npre], x[:, npre:]                                  # [B, P, C], [B, h*w, C]
        feat = feat.transpose(1, 2).reshape(b, c, h, w)                          # [B, C, h, w]
        out = self.proj(feat)                                                    # [B, C, h', w']
        if self.stride == 1:
            out = out + feat
        out = out.flatten(2).transpose(1, 2)                                     # [B, h'*w', C]
        return torch.cat([prefix, out], dim=1) if npre else out                  # [B, P + h'*w', C]
