"""MD-TPE: LightNet's multi-dimensional Toeplitz position encoding, a decayed Toeplitz mixing along each axis.

Qin et al., "You Only Scan Once: Efficient Multi-dimension Sequential Modeling with LightNet", arXiv 2405.21022. The
official LightNet code is not public; the module follows the first author's xmixers
(``xmixers/modules/pes/tpe.py::Tpe`` and ``md/md_tpe.py::MdTpe``, REFERENCES.md §3). Per axis, per head ``h``::

    λ_h = sigmoid(log_decay_h)                      learnable decay
    o_t = (q_h·k_h) Σ_s λ_h^{|t−s|} x_s             q, k ∈ R^{embed_dim}: learnable vectors (split per head)
    out = o_proj(GroupRMSNorm_H(o))                 one Tpe (own q, k, decay, norm, o_proj) per axis

and MD-TPE sums the Tpe of every axis, each run along its own axis of the ``[b, h, w, c]`` grid (rows mixed within
each column, columns within each row). As a position encoding it is added to the token stream: ``embed(x, pos) =
x + MdTpe(x)``.

**Choices where the reference is silent** (REFERENCES marks them unverified):

- Direction. xmixers' Tpe is causal (``Σ_{s≤t} λ^{t−s}``, via ``lightning_attn_func``). For images every token sees
  both sides: ``bidirectional=True`` (default) uses the symmetric kernel ``λ^{|t−s|}`` = forward scan + backward scan
  − the diagonal (counted twice). ``Positions.causal`` (or ``bidirectional=False``) gives xmixers' causal form.
- Placement (in `domains.vision.lightnet`): once, on the patch tokens right after the patch embedding, like an
  absolute/conditional encoding.

Cost: O(n · chunk) per axis with a chunked scan (an exact ``[chunk, chunk]`` decay matrix inside a chunk, the state
carried between chunks); never an [n, n] matrix. Prefix tokens (cls) are not on the grid and pass through unchanged;
padded tokens (``Positions.mask``) are zeroed before mixing.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding
from .registry import register_pe

__all__ = ["decayed_scan", "toeplitz_mix", "GroupRMSNorm", "Tpe", "MdTpe"]


def decayed_scan(x: Tensor, log_decay: Tensor, chunk: int = 32, reverse: bool = False) -> Tensor:
    """``y_t = Σ_{s≤t} λ_h^{t−s} x_s`` along dim 1 (``reverse``: ``Σ_{s≥t} λ_h^{s−t} x_s``).

    Args:
        x: ``[B, L, H, Dh]`` (sequence on dim 1, heads on dim 2).
        log_decay: ``[H]`` log λ (≤ 0), e.g. ``logsigmoid(p)``; gradients flow to it.
        chunk: block size: exact decay matrix inside a block, running state between blocks.

    Returns:
        ``[B, L, H, Dh]``.
    """
    if x.ndim != 4 or log_decay.shape != (x.shape[2],):
        raise ValueError(f"x must be [B, L, H, Dh] and log_decay [H], got {tuple(x.shape)} and "
                         f"{tuple(log_decay.shape)}")
    if reverse:
        return decayed_scan(x.flip(1), log_decay, chunk).flip(1)
    L = x.shape[1]
    ld = log_decay.to(x.dtype)
    if isinstance(L, torch.SymInt):           # a symbolic length (torch.export with dynamic shapes): one block
        i = torch.arange(L, device=x.device, dtype=x.dtype)
        diff = i[:, None] - i[None, :]
        decay_mat = torch.exp(ld[:, None, None] * diff.clamp_min(0)) * (diff >= 0)   # [H, L, L]
        return torch.einsum("hij,bjhd->bihd", decay_mat, x)
    c = max(1, min(chunk, L))
    i = torch.arange(c, device=x.device, dtype=x.dtype)
    diff = i[:, None] - i[None, :]                                              # [c, c] = i - j
    # λ^{i-j} for i >= j, else 0: exp of a masked exponent (no λ^{negative} overflow)
    tri = diff >= 0
    decay_mat = torch.exp(ld[:, None, None] * diff.clamp_min(0)) * tri         # [H, c, c]
    carry_in = torch.exp(ld[:, None] * (i + 1))                                 # [H, c]   λ^{i+1}
    state = x.new_zeros(x.shape[0], x.shape[2], x.shape[3])                     # [B, H, Dh]
    outs = []
    for a in range(0, L, c):
        xc = x[:, a:a + c]                                                      # [B, c', H, Dh]
        cc = xc.shape[1]
        y = torch.einsum("hij,bjhd->bihd", decay_mat[:, :cc, :cc], xc)
        y = y + carry_in[:, :cc].T[None, :, :, None] * state[:, None]
        outs.append(y)
        # state after this block = y at its last row
        state = y[:, -1]
    return torch.cat(outs, dim=1)


def toeplitz_mix(x: Tensor, log_decay: Tensor, bidirectional: bool = True, chunk: int = 32) -> Tensor:
    """``Σ_s λ_h^{|t−s|} x_s`` (bidirectional) or ``Σ_{s≤t} λ_h^{t−s} x_s`` along dim 1 of ``[B, L, H, Dh]``."""
    fwd = decayed_scan(x, log_decay, chunk)
    if not bidirectional:
        return fwd
    return fwd + decayed_scan(x, log_decay, chunk, reverse=True) - x


class GroupRMSNorm(nn.Module):
    """RMSNorm over each of ``num_groups`` equal channel groups (one per head), one learnable scale per channel."""

    def __init__(self, dim: int, num_groups: int = 1, eps: float = 1e-6):
        super().__init__()
        if dim % num_groups:
            raise ValueError(f"dim {dim} is not divisible by num_groups {num_groups}")
        self.num_groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xg = x.float().unflatten(-1, (self.num_groups, -1))                      # [.., g, c/g] (TorchScript too)
        xg = xg * torch.rsqrt(xg.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (xg.flatten(-2) * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, num_groups={self.num_groups}, eps={self.eps}"


class Tpe(nn.Module):
    """One axis of MD-TPE (xmixers ``Tpe``): decayed Toeplitz mixing per head, group RMSNorm, ``o_proj``.

    Keys: ``q``, ``k`` ``[embed_dim]``, ``log_decay`` ``[num_heads]``, ``norm.weight``, ``o_proj.weight``.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = False, eps: float = 1e-6, chunk: int = 32):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.chunk = embed_dim, num_heads, chunk
        self.q = nn.Parameter(torch.randn(embed_dim))
        self.k = nn.Parameter(torch.randn(embed_dim))
        self.log_decay = nn.Parameter(torch.randn(num_heads))
        self.norm = GroupRMSNorm(embed_dim, num_heads, eps)
        self.o_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def decay(self) -> Tensor:
        """``λ_h = sigmoid(log_decay_h)``  ``[H]``"""
        return torch.sigmoid(self.log_decay)

    def head_gain(self) -> Tensor:
        """``q_h·k_h``  ``[H]``"""
        return (self.q * self.k).reshape(self.num_heads, -1).sum(-1)

    def mix(self, x: Tensor, bidirectional: bool = True) -> Tensor:
        """Before norm and projection: ``(q_h·k_h) Σ_s λ_h^{|t−s|} x_s``; x ``[B, L, C]`` -> ``[B, L, C]``."""
        b, L, c = x.shape
        xh = x.reshape(b, L, self.num_heads, c // self.num_heads)                # [B, L, H, Dh]
        y = toeplitz_mix(xh, F.logsigmoid(self.log_decay), bidirectional, self.chunk)
        y = y * self.head_gain().to(y.dtype)[None, None, :, None]
        return y.reshape(b, L, c)

    def forward(self, x: Tensor, bidirectional: bool = True) -> Tensor:
        return self.o_proj(self.norm(self.mix(x, bidirectional)))


@register_pe("md_tpe", positions="2d", paper="Qin et al., You Only Scan Once: Efficient Multi-dimension Sequential "
             "Modeling with LightNet, arXiv:2405.21022", geometry={"embed_dim": "dim"})
class MdTpe(PositionalEncoding):
    """MD-TPE (LightNet): a `Tpe` per grid axis, summed, added to the tokens on the ``embed`` hook.

    Args:
        embed_dim: token width ``C``.
        num_heads: heads of the decay (one λ per head).
        num_axes: grid dimensions ``m`` (2 for images); 1D sequences use the first Tpe.
        bidirectional: symmetric kernel ``λ^{|t−s|}`` (vision); False: causal ``λ^{t−s}, s ≤ t`` as xmixers.
        bias: bias of each ``o_proj``.
        chunk: scan block size.

    ``embed(x, pos)``, x ``[b, n, C]``: the grid is ``pos.grid_size`` (row-major, after ``pos.num_prefix`` prefix
    tokens); without a grid the tokens form one sequence. ``pos.causal`` forces the causal form.
    Keys: ``tpes.<axis>.{q, k, log_decay, norm.weight, o_proj.weight}``.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_axes: int = 2, bidirectional: bool = True,
                 bias: bool = False, chunk: int = 32):
        super().__init__()
        if num_axes <= 0:
            raise ValueError(f"num_axes must be positive, got {num_axes}")
        self.embed_dim, self.num_heads, self.num_axes = embed_dim, num_heads, num_axes
        self.bidirectional = bidirectional
        self.tpes = nn.ModuleList([Tpe(embed_dim, num_heads, bias=bias, chunk=chunk) for _ in range(num_axes)])

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, bidirectional={self.bidirectional}"

    def grid_forward(self, x: Tensor, bidirectional: Optional[bool] = None) -> Tensor:
        """``Σ_k Tpe_k(x along axis k)`` on a grid ``x [B, n_1, .., n_m, C]`` (``m <= num_axes``)."""
        bidir = self.bidirectional if bidirectional is None else bidirectional
        m = x.ndim - 2
        if not 1 <= m <= self.num_axes:
            raise ValueError(f"MD-TPE with {self.num_axes} axes got a {m}-D grid {tuple(x.shape)}")
        out = torch.zeros_like(x)
        for k in range(m):
            xk = x.movedim(k + 1, -2)                                            # [B, .., n_k, C]
            shape = xk.shape
            yk = self.tpes[k](xk.reshape(-1, shape[-2], shape[-1]), bidir)      # [B*.., n_k, C]
            out = out + yk.reshape(shape).movedim(-2, k + 1)
        return out

    def embed(self, x: Tensor, pos: Optional[Positions]) -> Tensor:
        b, n, c = x.shape
        npre = pos.num_prefix if pos is not None else 0
        grid_shape: Sequence[int]
        if pos is not None and pos.grid_size is not None:
            pos.check_tokens(n)
            grid_shape = tuple(pos.grid_size)
        else:
            grid_shape = (n - npre,)
        if n - npre == 0:                                                        # no grid tokens: nothing to mix
            return x
        bidir = self.bidirectional and not (pos is not None and pos.causal)
        tokens = x[:, npre:]
        if pos is not None and pos.mask is not None:
            tokens = tokens * pos.mask[:, npre:, None].to(tokens.dtype)
        mixed = self.grid_forward(tokens.reshape(b, *grid_shape, c), bidir).reshape(b, n - npre, c)
        if npre:
            mixed = torch.cat([mixed.new_zeros(b, npre, c), mixed], dim=1)
        return x + mixed
