"""2D rotary position embedding for image grids: Heo et al., "Rotary Position Embedding for Vision Transformer",
ECCV 2024 (arXiv 2403.13298); official code naver-ai/rope-vit (``deit/models_v2_rope.py``). Verified against
timm's ``RotaryEmbeddingCat`` / ``RotaryEmbeddingMixed`` as used by its ``vit_*_patch16_rope[_mixed]_224`` models.

Coordinates come from ``Positions.grid`` (``[n, 2]`` or ``[b, n, 2]`` as (row, col)): ``x = col``, ``y = row``,
integer patch indices used as they are (no normalisation, no offset). At another image size the grid simply has more
or fewer rows/columns, so relative offsets keep their meaning; this is what the official code and timm do
(``in_pixels=False``, ``ref_feat_shape=None``, ``grid_offset=0``, ``grid_indexing='xy'``: the grid is rebuilt for
each size, never rescaled). Prefix tokens (cls, registers: the first ``pos.num_prefix``) are not rotated.

Pair layout: **interleaved**, pair ``t`` is channels ``(2t, 2t+1)`` of the head (timm ``rotate_half=False``; the
official code's ``view_as_complex`` over ``(..., d/2, 2)``)::

    channel   0 1 | 2 3 | ... | r/2-2 r/2-1 | r/2 r/2+1 | ... | r-2 r-1
    axial     col*f_0 | col*f_1 | ... | col*f_{r/4-1} | row*f_0 | ... | row*f_{r/4-1}
    mixed     pair t: col*fx[l, h, t] + row*fy[l, h, t]

RoPE-Axial (`AxialRoPE2d`): ``f_j = theta^(-4j / r)`` for ``j < r/4`` (theta = 100 in the paper), the first half of
the pairs rotated by the column, the second half by the row.

RoPE-Mixed (`MixedRoPE2d`): learnable frequencies ``freqs [2, depth, heads, r/2]`` (``freqs[0] = fx``,
``freqs[1] = fy``), one set per layer and head; initialised with magnitudes ``theta^(-4j/r)`` (theta = 10) along a
random direction ``phi`` per (layer, head): ``fx = [m cos(phi), m cos(phi + pi/2)]``, ``fy = [m sin(phi),
m sin(phi + pi/2)]`` (each half ``r/4`` long). Angles and cos/sin are float32 whatever the autocast dtype.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe

__all__ = ["axial_inv_freq", "axial_angles", "mixed_freqs_init", "mixed_angles", "rotate_pairs", "AxialRoPE2d",
           "MixedRoPE2d", "MixedRoPE2dLayer"]


def _check_rot_dim(r, name: str = "rot_dim") -> int:
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0 or r % 4:
        raise ValueError(f"{name} must be a positive multiple of 4 (two axes of rotary pairs), got {r!r}")
    return r


def axial_inv_freq(rot_dim: int, theta: float = 100.0, device=None) -> Tensor:
    """``theta^(-4j / rot_dim)`` for ``j = 0 .. rot_dim/4 - 1``: the per-axis frequencies, float32.  ``[r/4]``"""
    _check_rot_dim(rot_dim)
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta}")
    # float64 power then float32: the same bits on every device
    j = torch.arange(rot_dim // 4, dtype=torch.float64, device=device)
    return (1.0 / float(theta) ** (4.0 * j / rot_dim)).to(torch.float32)


def axial_angles(rows: Tensor, cols: Tensor, inv_freq: Tensor) -> Tensor:
    """RoPE-Axial angles ``cat(col * f, row * f)``, float32 (autocast off).

    Args:
        rows, cols: ``[...]`` grid coordinates.
        inv_freq: ``[r/4]``.

    Returns:
        ``[..., r/2]``: pairs ``0..r/4-1`` from the column, ``r/4..r/2-1`` from the row.
    """
    with no_autocast(rows.device):
        f = inv_freq.to(device=rows.device, dtype=torch.float32)
        return torch.cat([cols.float()[..., None] * f, rows.float()[..., None] * f], dim=-1)


def mixed_freqs_init(head_dim: int, num_heads: int, depth: int = 1, theta: float = 10.0, rotate: bool = True,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """RoPE-Mixed initial frequencies ``[2, depth, heads, d/2]`` (``[0]`` = fx, ``[1]`` = fy), float32.

    Magnitudes ``theta^(-4j/d)``, ``j < d/4``, along a direction ``phi ~ U[0, 2 pi)`` drawn per (layer, head)
    (``phi = 0`` when ``rotate=False``); the second quarter of the pairs is turned by a further ``pi/2``."""
    _check_rot_dim(head_dim, "head_dim")
    if num_heads <= 0 or depth <= 0:
        raise ValueError(f"num_heads and depth must be positive, got {num_heads} and {depth}")
    mag = axial_inv_freq(head_dim, theta)                                         # [d/4]
    if rotate:
        phi = torch.rand(depth, num_heads, 1, generator=generator) * (2 * math.pi)  # [L, h, 1]
    else:
        phi = torch.zeros(depth, num_heads, 1)
    fx = torch.cat([mag * phi.cos(), mag * (phi + math.pi / 2).cos()], dim=-1)     # [L, h, d/2]
    fy = torch.cat([mag * phi.sin(), mag * (phi + math.pi / 2).sin()], dim=-1)     # [L, h, d/2]
    return torch.stack([fx, fy], dim=0)                                           # [2, L, h, d/2]


def mixed_angles(rows: Tensor, cols: Tensor, freqs: Tensor) -> Tensor:
    """RoPE-Mixed angles ``col * fx + row * fy`` of one layer, float32 (autocast off).

    Args:
        rows, cols: ``[n]`` or ``[b, n]`` grid coordinates.
        freqs: ``[2, h, r/2]`` (that layer's fx, fy).

    Returns:
        ``[h, n, r/2]`` or ``[b, h, n, r/2]``.
    """
    if freqs.ndim != 3 or freqs.shape[0] != 2:
        raise ValueError(f"freqs must be [2, heads, r/2], got shape {tuple(freqs.shape)}")
    with no_autocast(rows.device):
        f = freqs.to(device=rows.device, dtype=torch.float32)
        x = cols.float()[..., None, :, None]                                      # [(b,) 1, n, 1]
        y = rows.float()[..., None, :, None]
        return x * f[0][:, None, :] + y * f[1][:, None, :]                       # [(b,) h, n, r/2]


# ---- shared plumbing -------------------------------------------------------------------------------------------

def _grid_coords(pos: Optional[Positions], n: int, by: str) -> Tuple[Tensor, Tensor, int]:
    """(rows, cols, num_prefix) of ``pos`` for a sequence of ``n`` tokens; rows/cols ``[n_grid]`` or ``[b, n_grid]``."""
    if pos is None:
        raise ValueError(f"{by} needs Positions with a grid (Positions.grid_2d(h, w, num_prefix=...)), got None")
    pos.require("grid", by=by)
    grid = pos.grid
    if grid.ndim not in (2, 3) or grid.shape[-1] != 2:
        raise ValueError(f"{by}: Positions.grid must be [n, 2] or [b, n, 2] (row, col), got {tuple(grid.shape)}")
    if pos.grid_size is not None and pos.grid_size[0] * pos.grid_size[1] != grid.shape[-2]:
        raise ValueError(f"{by}: Positions.grid_size {tuple(pos.grid_size)} does not match the {grid.shape[-2]} "
                         f"grid positions")
    p = int(pos.num_prefix)
    if p < 0 or grid.shape[-2] + p != n:
        raise ValueError(f"{by}: the grid has {grid.shape[-2]} positions after {p} prefix token(s), but the "
                         f"sequence has {n} tokens")
    return grid[..., 0], grid[..., 1], p


class _RotatePairs(torch.autograd.Function):
    """Rotate the interleaved pairs of ``x [..., n, d]`` by ``ang [..., n, d/2]`` (broadcast against x) as one
    complex product ``(x_{2t} + i x_{2t+1}) * e^{i ang_t}``.

    The backward needs no trigonometric terms of its own: ``dx = g * e^{-i ang}`` and, since
    ``d out / d ang = i * out``, ``d ang = Im(conj(out) * g)`` summed over the broadcast dims. Autograd through the
    real formula (strided slices, stack, cos/sin products with batch reductions) costs about twice as much on CPU.
    """

    @staticmethod
    def forward(ctx, x: Tensor, ang: Tensor) -> Tensor:
        real = torch.float64 if x.dtype == torch.float64 else torch.float32
        ang = ang.to(real)
        f = torch.complex(ang.cos(), ang.sin())                                   # [..., n, d/2]
        xc = torch.view_as_complex(x.to(real).unflatten(-1, (-1, 2)))             # [..., n, d/2] (a view)
        out = xc * f
        ctx.save_for_backward(f, out if ctx.needs_input_grad[1] else None)
        ctx.ang_shape, ctx.ang_dtype = ang.shape, ang.dtype
        return torch.view_as_real(out).flatten(-2).to(x.dtype)                   # [..., n, d]

    @staticmethod
    def backward(ctx, g: Tensor):
        f, out = ctx.saved_tensors
        real = f.real.dtype
        gc = torch.view_as_complex(g.to(real).contiguous().unflatten(-1, (-1, 2)))
        dx = dang = None
        if ctx.needs_input_grad[0]:
            dx = torch.view_as_real(gc * f.conj()).flatten(-2).to(g.dtype)
        if ctx.needs_input_grad[1]:
            dang = (out.conj() * gc).imag.sum_to_size(ctx.ang_shape).to(ctx.ang_dtype)
        return dx, dang


def rotate_pairs(x: Tensor, ang: Tensor) -> Tensor:
    """Rotate interleaved channel pairs ``(x_{2t}, x_{2t+1})`` of ``x [..., n, d]`` by ``ang [..., n, d/2]``
    (float32 angles; the rotation runs in float32, or float64 for float64 input, and returns ``x.dtype``).
    Equal to ``apply_rotary(x, ang.cos(), ang.sin(), layout="interleaved")``."""
    if ang.shape[-1] * 2 != x.shape[-1]:
        raise ValueError(f"ang has {ang.shape[-1]} pairs but x has {x.shape[-1]} channels (need d/2 pairs)")
    if x.stride(-1) != 1 or any(s % 2 for s in x.stride()[:-1]):
        x = x.contiguous()
    return _RotatePairs.apply(x, ang)


def _pad_angles(ang: Tensor, p: int, pairs: int) -> Tensor:
    """Angles ``[..., n_grid, r/2]`` -> ``[..., p + n_grid, pairs]``: prefix tokens and the channels past the rotary
    dims get angle 0, so one rotation covers every token and channel."""
    tail = pairs - ang.shape[-1]
    return F.pad(ang, (0, tail, p, 0)) if (p or tail) else ang


def _check_qk(q: Tensor, k: Tensor, head_dim: int, by: str) -> None:
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"{by} expects q, k as [b, h, n, d], got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[-1] != head_dim or k.shape[-1] != head_dim:
        raise ValueError(f"q/k head dim {q.shape[-1]}/{k.shape[-1]} does not match {by} head_dim={head_dim}")
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"{by} is for self-attention over one grid: q has {q.shape[-2]} tokens, k {k.shape[-2]}")


# ---- RoPE-Axial ------------------------------------------------------------------------------------------------

@register_pe("rope2d_axial", positions="2d", paper="Heo et al., Rotary Position Embedding for Vision Transformer, "
             "ECCV 2024, arXiv:2403.13298")
class AxialRoPE2d(PositionalEncoding):
    """RoPE-Axial (Heo et al., 2024): fixed frequencies, half of the rotary pairs follow the column, half the row.

    Args:
        head_dim: ``d`` of q/k.
        theta: frequency base (100 in the paper, naver-ai/rope-vit and timm's ``rope_temperature=100``).
        rot_dim: rotate only the first ``rot_dim`` channels (multiple of 4); default ``head_dim``.

    ``rotate(q, k, pos)``, q/k ``[b, h, n, d]``: coordinates from ``pos.grid`` (row, col), prefix tokens
    (``pos.num_prefix``) untouched; interleaved pairs, column pairs first (see the module docstring).
    No parameters or buffers (nothing in a state dict): float32 cos/sin are cached for the last grid seen,
    so one instance can serve every block of a model.
    """

    def __init__(self, head_dim: int, theta: float = 100.0, rot_dim: Optional[int] = None):
        super().__init__()
        if not isinstance(head_dim, int) or head_dim <= 0:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        r = _check_rot_dim(head_dim if rot_dim is None else rot_dim)
        if r > head_dim:
            raise ValueError(f"rot_dim {r} exceeds head_dim {head_dim}")
        if not theta > 0:
            raise ValueError(f"theta must be positive, got {theta}")
        self.head_dim, self.rot_dim, self.theta = head_dim, r, float(theta)
        self._cache: Optional[tuple] = None  # (grid, grid version, device, n, angles); plain attribute, not a buffer

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rot_dim={self.rot_dim}, theta={self.theta:g}, layout='interleaved'"

    def inv_freq(self, device=None) -> Tensor:
        """``[r/4]`` float32 per-axis frequencies."""
        return axial_inv_freq(self.rot_dim, self.theta, device)

    def _angles(self, pos: Positions, n: int, device) -> Tuple[Tensor, int]:
        """float32 angles ``[n_grid, r/2]`` (or ``[b, 1, n_grid, r/2]``) and the prefix count; cached per grid."""
        rows, cols, p = _grid_coords(pos, n, "AxialRoPE2d")
        device = torch.device(device)
        grid = pos.grid
        c = self._cache
        if (c is not None and c[0] is grid and c[1] == grid._version and c[2] == device and c[3] == n
                and not (c[4].is_inference() and not torch.is_inference_mode_enabled())):
            return c[4], p
        ang = axial_angles(rows.to(device), cols.to(device), self.inv_freq(device))   # [(b,) n_grid, r/2]
        if ang.ndim == 3:
            ang = ang[:, None]                                                    # [b, 1, n_grid, r/2]
        self._cache = (grid, grid._version, device, n, ang)
        return ang, p

    def cos_sin(self, pos: Positions, n: int, device) -> Tuple[Tensor, Tensor, int]:
        """float32 ``cos, sin`` ``[n_grid, r/2]`` (or ``[b, 1, n_grid, r/2]``) and the prefix count."""
        ang, p = self._angles(pos, n, device)
        return ang.cos(), ang.sin(), p

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        # q, k [b, h, n, d]
        _check_qk(q, k, self.head_dim, "AxialRoPE2d")
        ang, p = self._angles(pos, k.shape[-2], k.device)
        ang = _pad_angles(ang, p, self.head_dim // 2)                             # [(b, 1,) n, d/2]
        return rotate_pairs(q, ang), rotate_pairs(k, ang)


# ---- RoPE-Mixed ------------------------------------------------------------------------------------------------

@register_pe("rope2d_mixed", positions="2d", paper="Heo et al., Rotary Position Embedding for Vision Transformer, "
             "ECCV 2024, arXiv:2403.13298")
class MixedRoPE2d(PositionalEncoding):
    """RoPE-Mixed (Heo et al., 2024): learnable 2D frequencies per layer and head, ``angle = fx*col + fy*row``.

    Args:
        head_dim: ``d`` of q/k (multiple of 4; all channels are rotated).
        num_heads: ``h``.
        depth: number of layers sharing this module (one frequency set each); ``layer(i)`` gives the encoding to
            put in block ``i``'s attention.
        theta: base of the initial magnitudes (10 in the paper, naver-ai/rope-vit and timm).
        rotate_init: random initial direction per (layer, head), as the paper; False puts all at ``phi = 0``.

    Parameter ``freqs [2, depth, h, d/2]`` (``[0]`` = fx, ``[1]`` = fy): the layout of timm's ``rope.freqs``; the
    official checkpoints' ``freqs [2, depth, h*d/2]`` is the same tensor flattened. Interleaved pairs.
    ``rotate(q, k, pos, layer=None)`` uses layer 0 when ``depth == 1``.
    """

    def __init__(self, head_dim: int, num_heads: int, depth: int = 1, theta: float = 10.0, rotate_init: bool = True):
        super().__init__()
        _check_rot_dim(head_dim, "head_dim")
        for name, v in (("num_heads", num_heads), ("depth", depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not theta > 0:
            raise ValueError(f"theta must be positive, got {theta}")
        self.head_dim, self.num_heads, self.depth, self.theta = head_dim, num_heads, depth, float(theta)
        self.freqs = nn.Parameter(mixed_freqs_init(head_dim, num_heads, depth, theta, rotate=rotate_init))

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, num_heads={self.num_heads}, depth={self.depth}, theta={self.theta:g}, "
                f"layout='interleaved'")

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"freqs"}

    def reset_parameters(self, rotate_init: bool = True) -> None:
        with torch.no_grad():
            self.freqs.copy_(mixed_freqs_init(self.head_dim, self.num_heads, self.depth, self.theta, rotate_init))

    def layer(self, index: int) -> "MixedRoPE2dLayer":
        """The encoding of layer ``index``: rotates with ``freqs[:, index]`` (shared, not copied; it adds no state
        dict entries, so register this module itself once in the model, e.g. as ``model.rope``)."""
        if not isinstance(index, int) or not 0 <= index < self.depth:
            raise ValueError(f"layer index must be in 0..{self.depth - 1}, got {index!r}")
        return MixedRoPE2dLayer(self, index)

    def _angles(self, pos: Positions, n: int, layer: int, device) -> Tuple[Tensor, int]:
        rows, cols, p = _grid_coords(pos, n, "MixedRoPE2d")
        ang = mixed_angles(rows.to(device), cols.to(device), self.freqs[:, layer])  # [(b,) h, n_grid, d/2]
        return (ang[None] if ang.ndim == 3 else ang), p                           # [1|b, h, n_grid, d/2]

    def cos_sin(self, pos: Positions, n: int, layer: int, device) -> Tuple[Tensor, Tensor, int]:
        """float32 ``cos, sin`` ``[1, h, n_grid, d/2]`` (or ``[b, h, n_grid, d/2]``) of ``layer``, and the prefix."""
        ang, p = self._angles(pos, n, layer, device)
        return ang.cos(), ang.sin(), p

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions],
               layer: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        # q, k [b, h, n, d]
        if layer is None:
            if self.depth != 1:
                raise ValueError(f"this MixedRoPE2d holds {self.depth} layers: use .layer(i) as block i's encoding "
                                 f"or pass layer=")
            layer = 0
        if not 0 <= layer < self.depth:
            raise ValueError(f"layer must be in 0..{self.depth - 1}, got {layer}")
        _check_qk(q, k, self.head_dim, "MixedRoPE2d")
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q/k have {q.shape[1]} heads, MixedRoPE2d was built for {self.num_heads}")
        ang, p = self._angles(pos, k.shape[-2], layer, k.device)
        ang = _pad_angles(ang, p, self.head_dim // 2)                             # [1|b, h, n, d/2]
        return rotate_pairs(q, ang), rotate_pairs(k, ang)


class MixedRoPE2dLayer(PositionalEncoding):
    """One layer of a `MixedRoPE2d` (from ``MixedRoPE2d.layer(i)``): a view that owns no parameters."""

    def __init__(self, owner: MixedRoPE2d, index: int):
        super().__init__()
        self._owner = (owner,)  # a tuple, so that nn.Module does not register the owner (its freqs) a second time
        self.index = index

    @property
    def owner(self) -> MixedRoPE2d:
        return self._owner[0]

    def extra_repr(self) -> str:
        return f"layer={self.index}"

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        return self.owner.rotate(q, k, pos, layer=self.index)
