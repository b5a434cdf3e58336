"""Learned absolute position embeddings, with resampling to new grid sizes.

A table of trained vectors added to the tokens: BERT (Devlin et al., NAACL 2019) in 1D, ViT (Dosovitskiy et al.,
"An Image is Worth 16x16 Words", ICLR 2021) on a patch grid.  ViT section 3.2 fine-tunes at a higher resolution by
"2D interpolation of the pre-trained position embeddings, according to their location in the original image";
`resample_abs_pos_embed` does that the way timm does (``timm.layers.resample_abs_pos_embed``, verified against it
in the tests): prefix tokens kept, grid part interpolated in float32 (bicubic, antialiased), rectangular grids
both ways.

Parameter layout is timm's ViT: ``pos_embed`` ``[1, num_prefix + H*W, C]`` so ViT checkpoints load unchanged.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding
from .registry import register_pe

__all__ = ["resample_abs_pos_embed", "LearnedAPE", "to_pair"]

_MODES = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")


def to_pair(size: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    """``size`` or ``(size, size)`` as two positive ints ``(height, width)``; ``name`` goes into the error."""
    if isinstance(size, int):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {h}x{w}")
    return h, w


def resample_abs_pos_embed(posemb: Tensor, new_size: Sequence[int], old_size: Optional[Sequence[int]] = None,
                           num_prefix: int = 1, mode: str = "bicubic", antialias: bool = True,
                           symbolic: bool = False) -> Tensor:
    """Resample a ViT position table to a new grid (Dosovitskiy et al., 2021, section 3.2; timm's convention).

    Args:
        posemb: ``[1, num_prefix + H*W, C]``.
        new_size: target grid ``(h, w)`` (an int means square).
        old_size: source grid ``(H, W)``; None means square, ``H = W = sqrt(tokens - num_prefix)``.
        num_prefix: leading tokens (cls, registers) that are copied unchanged.
        mode: ``F.interpolate`` mode.
        antialias: antialiased down-sampling (bilinear / bicubic only, as in ``F.interpolate``).
        symbolic: ``new_size`` may hold symbolic sizes (torch.export with dynamic shapes): they are taken as they
            are and the table is always resampled (at its own size that is the identity up to rounding).

    Returns:
        ``[1, num_prefix + h*w, C]`` in ``posemb.dtype``; ``posemb`` itself when the size does not change.
    """
    if not isinstance(posemb, Tensor) or posemb.ndim != 3:
        raise ValueError(f"posemb must be a [1, tokens, C] tensor, got "
                         f"{tuple(posemb.shape) if isinstance(posemb, Tensor) else type(posemb).__name__}")
    if num_prefix < 0 or num_prefix > posemb.shape[1]:
        raise ValueError(f"num_prefix must be in 0..{posemb.shape[1]}, got {num_prefix}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    new_h, new_w = tuple(new_size) if symbolic else to_pair(new_size, "new_size")
    num_grid = posemb.shape[1] - num_prefix
    if old_size is None:
        side = math.isqrt(num_grid)
        if side * side != num_grid:
            raise ValueError(f"posemb has {num_grid} grid tokens (after {num_prefix} prefix), which is not a square: "
                             f"pass old_size=(H, W)")
        old_h, old_w = side, side
    else:
        old_h, old_w = to_pair(old_size, "old_size")
        if old_h * old_w != num_grid:
            raise ValueError(f"old_size {old_h}x{old_w} describes {old_h * old_w} grid tokens but posemb has "
                             f"{num_grid} (= {posemb.shape[1]} - num_prefix {num_prefix})")
    if not symbolic and (old_h, old_w) == (new_h, new_w):
        return posemb

    b, _, c = posemb.shape
    prefix, grid = posemb[:, :num_prefix], posemb[:, num_prefix:]
    # interpolate in float32: bicubic weights in bf16 visibly distort the table
    grid = grid.float().reshape(b, old_h, old_w, c).permute(0, 3, 1, 2)          # [1, C, H, W]
    aa = antialias and mode in ("bilinear", "bicubic")
    grid = F.interpolate(grid, size=(new_h, new_w), mode=mode, antialias=aa,
                         align_corners=False if mode in ("bilinear", "bicubic") else None)  # [1, C, h, w]
    grid = grid.permute(0, 2, 3, 1).reshape(b, new_h * new_w, c).to(posemb.dtype)  # [1, h*w, C]
    return torch.cat([prefix, grid], dim=1)                                       # [1, p + h*w, C]


@register_pe("learned", positions="1d", paper="Devlin et al., BERT, NAACL 2019, arXiv:1810.04805", causal_ok=True,
             geometry={"num_tokens_or_grid": "max_len"})
@register_pe("learned_2d", positions="2d", paper="Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021, "
             "arXiv:2010.11929",
             geometry={"num_tokens_or_grid": "grid_size"})
class LearnedAPE(PositionalEncoding):
    """Learned absolute position embedding (BERT 1D; ViT 2D grid with resampling).

    Args:
        num_tokens_or_grid: an int ``N`` (1D: positions ``0..N-1``) or a trained grid ``(H, W)``.
        dim: model width ``C``.
        num_prefix: leading tokens with their own learned vector (ViT's cls); grid form only.
        init_std: std of the truncated-normal init (0.02 as timm's ViT).

    ``embed(x, pos)``:

    * 1D: adds ``pos_embed[0, ids]`` with ``ids = pos.ids`` (ints ``[b, n]`` or ``[n]``) or ``0..n-1``.
    * grid: the grid is ``pos.grid_size`` (or the square grid implied by the token count); when it differs from
      the trained grid, the table is resampled (`resample_abs_pos_embed`).  The resampled table is cached per
      (grid, device, dtype, parameter version) when no gradient is needed, e.g. eval under ``torch.no_grad``;
      with grad it is recomputed so that autograd reaches ``pos_embed``.
    """

    max_cache = 8

    def __init__(self, num_tokens_or_grid: Union[int, Tuple[int, int]], dim: int, num_prefix: int = 0,
                 init_std: float = 0.02):
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(num_prefix, int) or num_prefix < 0:
            raise ValueError(f"num_prefix must be a non-negative int, got {num_prefix!r}")
        if isinstance(num_tokens_or_grid, int):
            if num_tokens_or_grid <= 0:
                raise ValueError(f"num_tokens_or_grid must be positive, got {num_tokens_or_grid}")
            if num_prefix:
                raise ValueError("num_prefix applies to a grid table only; in 1D give prefix tokens their own ids")
            self.grid_size: Optional[Tuple[int, int]] = None
            n = num_tokens_or_grid
        else:
            self.grid_size = to_pair(num_tokens_or_grid, "num_tokens_or_grid")
            n = num_prefix + self.grid_size[0] * self.grid_size[1]
        self.num_tokens = n
        self.num_prefix = num_prefix
        self.dim = dim
        self.pos_embed = nn.Parameter(torch.zeros(1, n, dim))                   # [1, p + H*W, C]
        nn.init.trunc_normal_(self.pos_embed, std=init_std)
        self._cache: Dict[tuple, Tensor] = {}

    def extra_repr(self) -> str:
        where = f"grid={self.grid_size}, num_prefix={self.num_prefix}" if self.grid_size else f"num_tokens={self.num_tokens}"
        return f"{where}, dim={self.dim}"

    # ---- grid ---------------------------------------------------------------------------------------------
    def _target_grid(self, n: int, pos: Optional[Positions]) -> Tuple[int, int]:
        if pos is not None and pos.grid_size is not None:
            pos.check_tokens(n)
            if pos.num_prefix != self.num_prefix:
                raise ValueError(f"pos.num_prefix is {pos.num_prefix} but the table was trained with "
                                 f"num_prefix={self.num_prefix}")
            return to_pair(pos.grid_size, "pos.grid_size")
        num_grid = n - self.num_prefix
        side = math.isqrt(max(num_grid, 0))
        if num_grid <= 0 or side * side != num_grid:
            raise ValueError(f"{n} tokens minus {self.num_prefix} prefix is not a square grid: "
                             f"pass Positions with grid_size")
        return side, side

    def grid_table(self, grid: Tuple[int, int], dtype: torch.dtype, device) -> Tensor:
        """``pos_embed`` for a ``grid``, resampled if needed: ``[1, p + h*w, C]`` in ``dtype``."""
        w = self.pos_embed
        if grid == self.grid_size:
            return w.to(device=device, dtype=dtype)
        if torch.is_grad_enabled() and w.requires_grad:
            # training: autograd must flow into pos_embed, so no cache
            return resample_abs_pos_embed(w, grid, self.grid_size, self.num_prefix).to(device=device, dtype=dtype)
        # _version changes on every in-place update (optimizer step, load_state_dict), invalidating the entry
        key = (grid, torch.device(device), dtype, w._version, torch.is_inference_mode_enabled())
        hit = self._cache.get(key)
        if hit is None:
            hit = resample_abs_pos_embed(w.detach(), grid, self.grid_size, self.num_prefix).to(device=device,
                                                                                                dtype=dtype)
            # stale entries (older versions) are useless; keep a handful of sizes
            self._cache = {k: v for k, v in self._cache.items() if k[3] == w._version}
            while len(self._cache) >= self.max_cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = hit
        return hit

    # ---- hook ---------------------------------------------------------------------------------------------
    def embed(self, x: Tensor, pos: Optional[Positions]) -> Tensor:
        # x [b, n, c]
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has {x.shape[-1]} channels but LearnedAPE was built with dim={self.dim}")
        n = x.shape[-2]
        if self.grid_size is not None:
            return x + self.grid_table(self._target_grid(n, pos), x.dtype, x.device)  # [1, n, C] broadcast
        ids = pos.ids if pos is not None and pos.ids is not None else None
        if ids is None:
            if n > self.num_tokens:
                raise ValueError(f"sequence of {n} tokens exceeds the table: positions must be < num_tokens="
                                 f"{self.num_tokens} (max position {self.num_tokens - 1})")
            return x + self.pos_embed[0, :n].to(x.dtype)                         # [n, C]
        if ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"pos.ids must be integers for a learned table, got {ids.dtype}")
        if ids.shape[-1] != n:
            raise ValueError(f"pos.ids has {ids.shape[-1]} positions but the sequence has {n} tokens")
        if ids.numel() == 0:                                                     # no tokens: nothing to add
            return x + self.pos_embed[0, :0].to(x.dtype)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.num_tokens:
            raise ValueError(f"pos.ids must be in 0..{self.num_tokens - 1} (num_tokens={self.num_tokens}), "
                             f"got min {lo}, max {hi}")
        return x + self.pos_embed[0][ids.to(x.device)].to(x.dtype)               # [b, n, C] or [n, C]
