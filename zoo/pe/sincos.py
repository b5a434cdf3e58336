"""Fixed sinusoidal absolute position embeddings.

* 1D: Vaswani et al., "Attention Is All You Need", NeurIPS 2017, section 3.5::

      PE[p, 2i]   = sin(p / base^(2i / dim))
      PE[p, 2i+1] = cos(p / base^(2i / dim))

  i.e. sin and cos of one frequency sit next to each other (interleaved layout).

* 2D: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (official
  ``util/pos_embed.py::get_2d_sincos_pos_embed``; the same table is stored in MAE checkpoints and loaded by timm).
  Half of the channels encode the column (x), half the row (y); each half is ``[sin | cos]`` of ``dim // 4``
  frequencies ``1 / base^(k / (dim/4))``::

      channels:  [ sin(col*w) | cos(col*w) | sin(row*w) | cos(row*w) ]      each dim/4 wide

  timm's ``build_sincos2d_pos_embed`` (same tokens, row-major) holds the same values with the blocks in the order
  ``[sin row | sin col | cos row | cos col]``.

Tables are computed on the fly in float32 (they are cheap and must not be cast to bf16 by ``module.half()``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe

__all__ = ["sincos_1d", "sincos_2d", "SinCosAPE"]


def _check_dim(dim: int, multiple: int, name: str = "dim") -> None:
    if not isinstance(dim, int) or dim <= 0 or dim % multiple:
        raise ValueError(f"{name} must be a positive multiple of {multiple}, got {dim!r}")


def _frequencies(num: int, base: float, device=None) -> Tensor:
    """``1 / base^(k / num)`` for k in 0..num-1, float32.  ``[num]``"""
    if base <= 0:
        raise ValueError(f"base must be positive, got {base}")
    exponent = torch.arange(num, device=device, dtype=torch.float64) / num
    # float64 for the power, then float32: the table is identical on every device
    return (1.0 / (float(base) ** exponent)).to(torch.float32)


def sincos_1d(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Sinusoidal table of Vaswani et al. (2017) at ``positions`` (ints or floats), interleaved sin/cos.

    Args:
        positions: ``[...]`` positions (any shape; float positions allowed).
        dim: channels, even.
        base: the wavelength base (10000 in the paper).

    Returns:
        ``[..., dim]`` float32 with ``out[..., 2i] = sin(p * w_i)``, ``out[..., 2i+1] = cos(p * w_i)``,
        ``w_i = base^(-2i/dim)``.
    """
    if not isinstance(positions, Tensor):
        raise ValueError(f"positions must be a Tensor, got {type(positions).__name__}")
    _check_dim(dim, 2)
    with no_autocast(positions.device):
        freqs = _frequencies(dim // 2, base, positions.device)                   # [dim/2]
        angles = positions.to(torch.float32)[..., None] * freqs                  # [..., dim/2]
        out = torch.stack([angles.sin(), angles.cos()], dim=-1)                  # [..., dim/2, 2]
    return out.flatten(-2)                                                       # [..., dim]


def _sincos_2d_at(rows: Tensor, cols: Tensor, dim: int, base: float) -> Tensor:
    """MAE layout at arbitrary (row, col) coordinates.  rows, cols ``[...]`` -> ``[..., dim]`` float32."""
    _check_dim(dim, 4)
    with no_autocast(rows.device):
        freqs = _frequencies(dim // 4, base, rows.device)                        # [dim/4]
        ax = cols.to(torch.float32)[..., None] * freqs                           # [..., dim/4]
        ay = rows.to(torch.float32)[..., None] * freqs                           # [..., dim/4]
        return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=-1)      # [..., dim]


def sincos_2d(height: int, width: int, dim: int, base: float = 10000.0, device=None) -> Tensor:
    """2D sin-cos table of MAE (He et al., 2022) for a row-major ``height x width`` grid.

    Returns:
        ``[height * width, dim]`` float32, row-major (token ``r * width + c`` is at row r, column c).
    """
    if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive ints, got {height!r}x{width!r}")
    rows = torch.arange(height, device=device).repeat_interleave(width)          # [h*w]
    cols = torch.arange(width, device=device).repeat(height)                     # [h*w]
    return _sincos_2d_at(rows, cols, dim, base)


@register_pe("sincos", positions="1d", paper="Vaswani et al., Attention Is All You Need, NeurIPS 2017, "
             "arXiv:1706.03762", causal_ok=True)
@register_pe("sincos_2d", positions="2d", paper="He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR "
             "2022, arXiv:2111.06377")
class SinCosAPE(PositionalEncoding):
    """Fixed sinusoidal absolute position embedding added to the tokens (``embed`` hook).

    1D (Vaswani et al., 2017) unless the positions describe a grid, then 2D (MAE, He et al., 2022):

    * ``pos.grid_size`` set: the 2D table at ``pos.grid`` (or the row-major grid of ``grid_size``); the first
      ``pos.num_prefix`` tokens (cls, registers) are not on the grid and get zero.
    * otherwise: the 1D table at ``pos.ids`` (``[b, n]`` or ``[n]``, floats allowed), or at ``0..n-1`` when there
      are no ids.

    Nothing is stored: the table is computed in float32 each call and cast to ``x.dtype`` when added.

    Args:
        dim: model width (even for 1D, a multiple of 4 for 2D).
        base: wavelength base, 10000 in both papers.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        _check_dim(dim, 2)
        if base <= 0:
            raise ValueError(f"base must be positive, got {base}")
        self.dim = dim
        self.base = float(base)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base:g}"

    def table(self, n: int, pos: Optional[Positions], device) -> Tensor:
        """The float32 table for ``n`` tokens: ``[n, dim]`` or ``[b, n, dim]`` (batched 1D ids)."""
        if pos is not None and pos.grid_size is not None:
            pos.check_tokens(n)
            if pos.grid is not None:
                grid = pos.grid.to(device)                                       # [n - p, 2] (row, col)
                if grid.shape[-1] != 2 or grid.shape[-2] != n - pos.num_prefix:
                    raise ValueError(f"pos.grid must be [{n - pos.num_prefix}, 2], got {tuple(grid.shape)}")
                tab = _sincos_2d_at(grid[..., 0], grid[..., 1], self.dim, self.base)
            else:
                tab = sincos_2d(*pos.grid_size, dim=self.dim, base=self.base, device=device)
            if pos.num_prefix:
                # prefix tokens are not on the grid: they get no position signal
                zeros = tab.new_zeros(tab.shape[:-2] + (pos.num_prefix, self.dim))
                tab = torch.cat([zeros, tab], dim=-2)                           # [n, dim]
            return tab
        if pos is not None and pos.ids is not None:
            ids = pos.ids.to(device)
            if ids.shape[-1] != n:
                raise ValueError(f"pos.ids has {ids.shape[-1]} positions but the sequence has {n} tokens")
            return sincos_1d(ids, self.dim, self.base)                           # [b, n, dim] or [n, dim]
        return sincos_1d(torch.arange(n, device=device), self.dim, self.base)   # [n, dim]

    def embed(self, x: Tensor, pos: Optional[Positions]) -> Tensor:
        # x [b, n, c]
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has {x.shape[-1]} channels but SinCosAPE was built with dim={self.dim}")
        return x + self.table(x.shape[-2], pos, x.device).to(x.dtype)
