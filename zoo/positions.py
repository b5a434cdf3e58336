"""`Positions`: what is where. Built by a domain's data pipeline, consumed by positional encodings.

Every field is optional; an encoding reads the fields it needs and raises a clear error when one is missing.
Shapes (b = batch, n = tokens):

    ids       [b, n]      1D positions (float allowed: V2PE's fractional visual steps)
    grid      [n, 2]      (row, col) of every token of a regular grid, prefix tokens excluded
    grid_size (h, w)      size of that grid
    levels    [b, n, l]   hierarchical ids (file / class / function / statement / token)
    segments  [b, n]      segment ids (BiPE)
    boxes     [b, n, 4]   word boxes (x0, y0, x1, y1), normalised to 0..1000
    mask      [b, n]      True where a token is real (False = padding)
    num_prefix int        leading special tokens (cls, registers) that are not on the grid
    doc_ids   [b, n]      document id of every token of a packed sequence (ints): attention stays inside a document
                          (`zoo.nn.Attention` adds the block-diagonal mask; ``ids`` then restart at each document)
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["Positions"]


@dataclass
class Positions:
    ids: Optional[Tensor] = None
    grid: Optional[Tensor] = None
    grid_size: Optional[Tuple[int, int]] = None
    levels: Optional[Tensor] = None
    segments: Optional[Tensor] = None
    boxes: Optional[Tensor] = None
    mask: Optional[Tensor] = None
    num_prefix: int = 0
    causal: bool = False
    doc_ids: Optional[Tensor] = None

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def sequence(cls, n: int, batch: int = 1, device=None, causal: bool = False, offset: int = 0) -> "Positions":
        """1D positions ``offset .. offset+n-1`` for ``batch`` sequences."""
        ids = torch.arange(offset, offset + n, device=device).unsqueeze(0).expand(batch, n)
        return cls(ids=ids, causal=causal)

    @classmethod
    def packed(cls, doc_ids: Tensor, causal: bool = False) -> "Positions":
        """Positions of packed sequences from their document ids ``[b, n]`` (or ``[n]``): ``ids`` restart at 0 where
        a document starts (a change of id along the sequence), ``doc_ids`` kept for the per-document mask."""
        if not isinstance(doc_ids, Tensor) or doc_ids.ndim not in (1, 2) or doc_ids.dtype.is_floating_point \
                or doc_ids.dtype == torch.bool:
            got = type(doc_ids).__name__ if not isinstance(doc_ids, Tensor) else f"{doc_ids.dtype} {tuple(doc_ids.shape)}"
            raise ValueError(f"doc_ids must be an integer tensor [b, n] (or [n]) of document ids, got {got}")
        docs = doc_ids if doc_ids.ndim == 2 else doc_ids.unsqueeze(0)
        b, n = docs.shape
        idx = torch.arange(n, device=docs.device).expand(b, n)
        starts = torch.ones_like(docs, dtype=torch.bool)
        starts[:, 1:] = docs[:, 1:] != docs[:, :-1]                             # first token of each document
        first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values   # [b, n] start of own doc
        return cls(ids=idx - first, doc_ids=docs, causal=causal)

    @classmethod
    def grid_2d(cls, height: int, width: int, num_prefix: int = 0, device=None) -> "Positions":
        """A row-major ``height x width`` grid after ``num_prefix`` special tokens."""
        if height <= 0 or width <= 0:
            raise ValueError(f"grid size must be positive, got {height}x{width}")
        rows = torch.arange(height, device=device).repeat_interleave(width)
        cols = torch.arange(width, device=device).repeat(height)
        return cls(grid=torch.stack([rows, cols], dim=-1), grid_size=(height, width), num_prefix=num_prefix)

    # ---- helpers ------------------------------------------------------------------------------------------
    @property
    def grid_tokens(self) -> int:
        if self.grid_size is None:
            raise ValueError("these Positions carry no grid (grid_size is None)")
        return self.grid_size[0] * self.grid_size[1]

    def check_tokens(self, n: int) -> None:
        """Raise a clear error when the token count ``n`` does not match the grid plus prefix tokens."""
        if self.grid_size is not None and self.grid_tokens + self.num_prefix != n:
            h, w = self.grid_size
            raise ValueError(
                f"grid {h}x{w} with {self.num_prefix} prefix token(s) describes {h * w + self.num_prefix} tokens, "
                f"but the sequence has {n} tokens")

    def to(self, device=None, dtype=None) -> "Positions":
        """Move tensor fields to ``device`` (dtype applies to float fields only)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            out[f.name] = v
        return replace(self, **out)

    # per-token fields and the axis that counts tokens (counted from the end: ids [b?, n], levels [b?, n, l])
    _TOKEN_AXES = (("ids", -1), ("levels", -2), ("segments", -1), ("boxes", -2), ("mask", -1), ("doc_ids", -1))

    @property
    def num_tokens(self) -> Optional[int]:
        """Token count ``n`` of the first per-token field present (ids, levels, segments, boxes, mask); None if
        none is set.  The grid is not counted (it excludes prefix tokens)."""
        for name, axis in self._TOKEN_AXES:
            v = getattr(self, name)
            if isinstance(v, Tensor):
                return v.shape[axis]
        return None

    def tail(self, n: int) -> "Positions":
        """The positions of the last ``n`` tokens: every per-token field sliced on its token axis.

        A KV cache feeds only new tokens through a layer while ``Positions`` describe all keys (past + new); the
        rotary hooks get ``pos.tail(n_new)``.  Grid positions (``grid``/``num_prefix``) cannot be sliced that way
        and raise."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if self.grid is not None or self.grid_size is not None:
            raise ValueError("Positions.tail: grid positions (grid / grid_size) cannot be sliced by token; "
                             "build the Positions of the new tokens directly")
        out = {}
        for name, axis in self._TOKEN_AXES:
            v = getattr(self, name)
            if isinstance(v, Tensor):
                if v.ndim < -axis:
                    raise ValueError(f"Positions.{name} has shape {tuple(v.shape)}, too few dims to slice tokens")
                if n > v.shape[axis]:
                    raise ValueError(f"Positions.tail({n}): Positions.{name} describes only {v.shape[axis]} tokens")
                out[name] = v.narrow(v.ndim + axis, v.shape[axis] - n, n)
        return replace(self, **out)

    def require(self, *names: str, by: str = "this encoding") -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{by} needs Positions.{', '.join(missing)}, which the input does not provide")
