"""MD-LRPE, cosine form: LightNet's multi-dimensional linearised relative position encoding.

Qin et al., "You Only Scan Once: Efficient Multi-dimension Sequential Modeling with LightNet", arXiv 2405.21022
(MD-LRPE; LRPE itself: Qin et al., "Linearized Relative Positional Encoding", TMLR 2023). The official LightNet repo
is not public; the semantics here follow the first author's reference function
``xopes/ops/lrpe/cosine/_md/lrpe_cosine_md_torch.py::lrpe_cosine_md_torch(x, theta, shape, l)`` (REFERENCES.md §3).

A token at grid position ``s = (s_1, .., s_m)`` (row-major, axis 1 slowest, as ``meshgrid(indexing="ij")``) gets, in
head channel ``c``, the angle::

    e = ceil(D / m)                      channels per axis
    Θ_s = concat_k(s_k * θ[:e])[:D]      chunk k of the channels encodes axis k (the last chunk may be shorter)

and the transform doubles the feature dim (no pairs, no layout question: every channel keeps its own angle)::

    x [.., n, D]  ->  [x ⊙ cos Θ, x ⊙ sin Θ]  [.., n, 2D]

so that for a query at ``s`` and a key at ``t``:  ``q'·k' = Σ_c q_c k_c cos(Θ_{s,c} − Θ_{t,c})``, a function of
``s − t`` only, and even in each axis' offset (``cos`` is even: ``+Δ`` and ``−Δ`` along an axis score alike). Because
q' and k' only ever meet each other, linear attention (``φ(q')(φ(k')ᵀ v)``) keeps it as is.
Prefix tokens (cls, registers: ``Positions.num_prefix``) get ``Θ = 0``, i.e. ``[x, 0]``.

Frequencies: ``θ_j = base^(-2j/D)``, ``j ∈ [0, D)`` (xmixers ``Lrpe`` cosine/complex type), shared by all heads; the
reference function takes ``θ`` of shape ``[H, e]``, and each axis uses the first ``e`` of ours. Angles are float32
whatever the autocast dtype.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe

__all__ = ["lrpe_theta", "md_lrpe_angles", "lrpe_cosine", "MdLrpeCosine"]


def lrpe_theta(dim: int, base: float = 10000.0, device=None) -> Tensor:
    """``θ_j = base^(-2j/dim)`` for ``j in [0, dim)``, float32.  ``[dim]``"""
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if base <= 0:
        raise ValueError(f"base must be positive, got {base}")
    j = torch.arange(dim, dtype=torch.float64, device=device)
    return (float(base) ** (-2.0 * j / dim)).to(torch.float32)


def md_lrpe_angles(coords: Tensor, theta: Tensor, dim: int, num_prefix: int = 0) -> Tensor:
    """Angles ``Θ`` of tokens at ``coords`` (one axis per column), prefix rows zero.

    Args:
        coords: ``[n, m]`` or ``[b, n, m]`` grid coordinates (int or float), axis 1 first.
        theta: ``[e']`` frequencies, ``e' >= ceil(dim / m)``; axis k uses ``theta[:e]`` in channels
            ``k*e .. (k+1)*e - 1``.
        dim: head dim ``D``.
        num_prefix: leading tokens not on the grid, given ``Θ = 0``.

    Returns:
        float32 ``[num_prefix + n, dim]`` (or ``[b, num_prefix + n, dim]``).
    """
    if coords.ndim not in (2, 3):
        raise ValueError(f"coords must be [n, m] or [b, n, m], got shape {tuple(coords.shape)}")
    m = coords.shape[-1]
    e = math.ceil(dim / m)
    if theta.ndim != 1 or theta.shape[0] < e:
        raise ValueError(f"{m} axes over {dim} channels need >= {e} frequencies, got theta {tuple(theta.shape)}")
    with no_autocast(coords.device):
        th = theta[:e].to(device=coords.device, dtype=torch.float32)
        c = coords.to(torch.float32)
        ang = (c[..., :, None] * th).flatten(-2)[..., :dim]                     # [.., n, m*e] -> [.., n, D]
        if num_prefix:
            ang = torch.cat([ang.new_zeros(*ang.shape[:-2], num_prefix, dim), ang], dim=-2)
    return ang


def lrpe_cosine(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``[x ⊙ cos, x ⊙ sin]``: ``x [.., n, D]``, cos/sin broadcastable to it -> ``[.., n, 2D]`` in ``x.dtype``."""
    xf = x.float()
    return torch.cat([xf * cos, xf * sin], dim=-1).to(x.dtype)


@register_pe("md_lrpe_cosine", positions="2d", paper="Qin et al., You Only Scan Once: Efficient Multi-dimension "
             "Sequential Modeling with LightNet, arXiv:2405.21022")
class MdLrpeCosine(PositionalEncoding):
    """MD-LRPE, cosine form (LightNet, Qin et al., 2024) on the ``rotate`` hook; doubles q/k to ``2 * head_dim``.

    Args:
        head_dim: ``D`` of q/k.
        num_heads: kept for the factory signature and checkpoints' sake; all heads share the frequencies.
        base: frequency base (10000).

    ``rotate(q, k, pos)``, q/k ``[b, h, n, D]`` -> ``[b, h, n, 2D]`` each. Positions, in order of preference:
    ``pos.grid`` (``[n, m]`` coordinates, after ``pos.num_prefix`` prefix tokens: multi-dimensional),
    ``pos.ids`` (``[b, n]`` or ``[n]``: 1D, ``e = D``), else ``0 .. n-1`` after the prefix tokens. The encoding is
    meant for linear attention (`zoo.nn.LinearAttention`): in softmax attention the doubled head dim would also
    change the logit scale.
    """

    def __init__(self, head_dim: int, num_heads: int = 1, base: float = 10000.0):
        super().__init__()
        if not isinstance(head_dim, int) or head_dim <= 0:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if base <= 0:
            raise ValueError(f"base must be positive, got {base}")
        self.head_dim, self.num_heads, self.base = head_dim, num_heads, float(base)
        # plain attribute, not a buffer: module.half() must not cast the frequencies
        self._theta: Dict[torch.device, Tensor] = {}

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_heads={self.num_heads}, base={self.base:g}"

    def theta(self, device=None) -> Tensor:
        device = torch.device(device if device is not None else "cpu")
        t = self._theta.get(device)
        if t is None:
            t = self._theta[device] = lrpe_theta(self.head_dim, self.base, device)
        return t

    def angles(self, pos: Optional[Positions], n: int, device) -> Tensor:
        """float32 ``Θ`` of ``n`` tokens: ``[n, D]``, or ``[b, 1, n, D]`` for per-sample ``pos.ids``."""
        theta = self.theta(device)
        npre = pos.num_prefix if pos is not None else 0
        if pos is not None and pos.grid is not None:
            pos.check_tokens(n)
            grid = pos.grid
            if grid.ndim != 2 or grid.shape[0] + npre != n:
                raise ValueError(f"pos.grid {tuple(grid.shape)} with {npre} prefix token(s) does not describe "
                                 f"{n} tokens")
            return md_lrpe_angles(grid.to(device), theta, self.head_dim, npre)
        if pos is not None and pos.ids is not None:
            ids = pos.ids
            if ids.shape[-1] != n:
                raise ValueError(f"pos.ids has {ids.shape[-1]} positions but q/k have {n}")
            if ids.ndim == 2 and ids.shape[0] > 1 and ids.stride(0) == 0:
                ids = ids[0]                                                     # expanded batch: one table
            ang = md_lrpe_angles(ids[..., npre:, None].to(device), theta, self.head_dim, npre)
            return ang[:, None] if ang.ndim == 3 else ang                       # [b, 1, n, D] | [n, D]
        if n < npre:
            raise ValueError(f"{npre} prefix token(s) but only {n} tokens")
        coords = torch.arange(n - npre, device=device)[:, None]
        return md_lrpe_angles(coords, theta, self.head_dim, npre)

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        # q, k [b, h, n, D] -> [b, h, n, 2D]
        if q.shape[-1] != self.head_dim or k.shape[-1] != self.head_dim:
            raise ValueError(f"q/k head dim {q.shape[-1]}/{k.shape[-1]} does not match MD-LRPE "
                             f"head_dim={self.head_dim}")
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(f"MD-LRPE needs queries and keys at the same positions, got {q.shape[-2]} and "
                             f"{k.shape[-2]} tokens")
        ang = self.angles(pos, k.shape[-2], k.device)                           # [n, D] | [b, 1, n, D]
        cos, sin = ang.cos(), ang.sin()
        return lrpe_cosine(q, cos, sin), lrpe_cosine(k, cos, sin)
