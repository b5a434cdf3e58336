"""Bounding-box (layout) encodings of document words: LayoutLM's 2D absolute tables and LayoutLMv3's spatial-aware
relative bias.

LayoutLM (Xu et al., KDD 2020, arXiv 1912.13318), checked against HF transformers 5.24 ``LayoutLMEmbeddings``::

    e = word + pos1d + X[x0] + Y[y0] + X[x1] + Y[y1] + H[y1 - y0] + W[x1 - x0] + type      -> LayerNorm
        X / Y tables are shared by left/right and top/bottom; every table [1024, hidden]

LayoutLMv3 (Huang et al., ACM MM 2022, arXiv 2204.08387), checked against ``LayoutLMv3TextEmbeddings`` and
``LayoutLMv3Encoder``::

    spatial = cat(X[x0], Y[y0], X[x1], Y[y1], H[clip(y1 - y0, 0, 1023)], W[clip(x1 - x0, 0, 1023)])
              X, Y [1024, coordinate_size]; H, W [1024, shape_size]; 4 * coordinate + 2 * shape = hidden
    bias[b, h, i, j] = ( R1[bucket32/128(p_j - p_i)] + Rx[bucket64/256(x0_j - x0_i)] + Ry[bucket64/256(y1_j - y1_i)] )[h]
                       / sqrt(D)                      (x0 and y1 = the *bottom* edge; T5 bidirectional buckets)

HF adds that bias to ``q.k / sqrt(D)``; our attention computes ``q.k * scale`` and adds the bias hook's output, so
`LayoutLMv3SpatialBias.bias` returns the bucket sum times ``scale`` (= ``1/sqrt(D)``), the same logits.
The tables are ``Linear(bins, H, bias=False)`` weights (``[H, bins]``) as in the checkpoint; a lookup is a column.

Boxes are ``[b, n, 4]`` ``(x0, y0, x1, y1)`` in 0..1000 (``int(1000 * x / page_width)``); `check_boxes` raises a
ValueError naming the argument for anything else (never an index error).  Float boxes are rounded to the nearest
integer (the tables are indexed by integers); float boxes that all lie within 0..1 (boxes normalised by the page
size, HF BROS's input convention) are refused rather than rounded to 0 / 1.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..positions import Positions
from .base import ForwardMemo, PositionalEncoding
from .registry import register_pe
from .t5 import t5_bucket

__all__ = ["check_boxes", "LayoutLM2DEmbedding", "LayoutLMv3SpatialEmbedding", "LayoutLMv3SpatialBias",
           "roberta_position_ids", "layoutlmv3_bucket", "ForwardMemo"]

MAX_COORD = 1000


def check_boxes(boxes, name: str = "boxes", max_value: int = MAX_COORD, ordered: bool = False) -> Tensor:
    """Validate ``[b, n, 4]`` (or ``[n, 4]``) boxes in ``0..max_value``; returns them as int64 (floats rounded).

    ``ordered=True`` also requires ``x0 <= x1`` and ``y0 <= y1`` (LayoutLM v1 looks up ``x1 - x0`` in a table).
    Float boxes all within 0..1 (and not all zero) are refused: they are normalised by the page size, not 0..1000."""
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{name} must be a Tensor [b, n, 4], got {type(boxes).__name__}")
    if boxes.ndim not in (2, 3) or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must be [b, n, 4] (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise ValueError(f"{name} must hold numbers, got {boxes.dtype}")
    if boxes.is_floating_point():
        if not bool(torch.isfinite(boxes).all()):
            raise ValueError(f"{name} holds NaN or inf")
        # float boxes all within [0, 1] (not all-zero padding) are normalised to 0..1 (HF BROS's input convention);
        # rounded onto the 0..1000 grid every coordinate would become 0 or 1 and the layout would be lost
        if boxes.numel() and bool(boxes.ge(0).all()) and bool(boxes.le(1).all()) and bool(boxes.ne(0).any()):
            raise ValueError(f"{name} are floats within 0..1 (normalised by the page size?), but zoo's boxes are "
                             f"normalised to 0..{max_value} (int(1000 * x / page_width)): pass boxes * 1000")
        boxes = boxes.round()
    boxes = boxes.long()
    if boxes.numel():
        lo, hi = int(boxes.min()), int(boxes.max())
        if lo < 0 or hi > max_value:
            raise ValueError(f"{name} must be normalised to 0..{max_value} (int(1000 * x / page_width)); got values "
                             f"in {lo}..{hi}")
        if ordered and (bool((boxes[..., 2] < boxes[..., 0]).any()) or bool((boxes[..., 3] < boxes[..., 1]).any())):
            raise ValueError(f"{name} must satisfy x0 <= x1 and y0 <= y1 (x0, y0, x1, y1 order)")
    return boxes


def _boxes_of(pos: Optional[Positions], by: str) -> Tensor:
    if pos is None or pos.boxes is None:
        raise ValueError(f"{by} needs Positions.boxes [b, n, 4], which the input does not provide")
    return pos.boxes


@register_pe("layoutlm_2d", positions="boxes", paper="Xu et al., LayoutLM: Pre-training of Text and Layout for "
             "Document Image Understanding, KDD 2020, arXiv:1912.13318")
class LayoutLM2DEmbedding(PositionalEncoding):
    """LayoutLM v1 2D absolute position embedding on the ``embed`` hook: adds
    ``X[x0] + Y[y0] + X[x1] + Y[y1] + H[y1 - y0] + W[x1 - x0]`` (tables ``[max_2d, dim]``) to ``x [b, n, dim]``.

    Key names follow HF (``x_position_embeddings`` ...), so LayoutLM checkpoints load by name.  Word, 1D position and
    token-type embeddings and the LayerNorm belong to the model (they are not positions of boxes)."""

    def __init__(self, dim: int, max_2d_positions: int = 1024, init_std: float = 0.02):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(max_2d_positions, bool) or not isinstance(max_2d_positions, int) or max_2d_positions <= MAX_COORD:
            raise ValueError(f"max_2d_positions must be an int > {MAX_COORD}, got {max_2d_positions!r}")
        self.dim, self.max_2d_positions = dim, max_2d_positions
        self.x_position_embeddings = nn.Embedding(max_2d_positions, dim)
        self.y_position_embeddings = nn.Embedding(max_2d_positions, dim)
        self.h_position_embeddings = nn.Embedding(max_2d_positions, dim)
        self.w_position_embeddings = nn.Embedding(max_2d_positions, dim)
        for m in (self.x_position_embeddings, self.y_position_embeddings, self.h_position_embeddings,
                  self.w_position_embeddings):
            nn.init.normal_(m.weight, std=init_std)

    def layout(self, boxes: Tensor) -> Tensor:
        """The 2D term ``[b, n, dim]`` of ``boxes [b, n, 4]`` (0..1000, x0 <= x1, y0 <= y1)."""
        bx = check_boxes(boxes, ordered=True).to(self.x_position_embeddings.weight.device)
        x0, y0, x1, y1 = bx.unbind(-1)
        return (self.x_position_embeddings(x0) + self.y_position_embeddings(y0) + self.x_position_embeddings(x1)
                + self.y_position_embeddings(y1) + self.h_position_embeddings(y1 - y0)
                + self.w_position_embeddings(x1 - x0))

    def embed(self, x: Tensor, pos: Optional[Positions]) -> Tensor:
        boxes = _boxes_of(pos, "LayoutLM2DEmbedding")
        if boxes.shape[-2] != x.shape[-2]:
            raise ValueError(f"Positions.boxes describe {boxes.shape[-2]} tokens but x has {x.shape[-2]}")
        return x + self.layout(boxes).to(x.dtype)


# geometry -> LayoutLMv3's sizes: the six tables fill the model width, 4 * coordinate_size + 2 * shape_size == dim
# (HF LayoutLMv3: 128 + 128 for hidden 768, i.e. dim / 6 each; a width not divisible by 6 gives shape the remainder)
def _v3_coordinate_size(dim: int) -> int:
    return _v3_sizes(dim)[0]


def _v3_shape_size(dim: int) -> int:
    return _v3_sizes(dim)[1]


def _v3_sizes(dim: int) -> Tuple[int, int]:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 6 or dim % 2:
        raise ValueError(f"layoutlmv3_spatial fills the model width with 4 * coordinate_size + 2 * shape_size: dim "
                         f"must be an even int >= 6, got {dim!r}")
    c = dim // 6
    return c, (dim - 4 * c) // 2


@register_pe("layoutlmv3_spatial", positions="boxes", paper="Huang et al., LayoutLMv3: Pre-training for Document AI "
             "with Unified Text and Image Masking, ACM MM 2022, arXiv:2204.08387",
             geometry={"coordinate_size": ("dim", _v3_coordinate_size), "shape_size": ("dim", _v3_shape_size)})
class LayoutLMv3SpatialEmbedding(PositionalEncoding):
    """LayoutLMv3 text-token spatial embedding on the ``embed`` hook: adds the concatenation
    ``[X[x0], Y[y0], X[x1], Y[y1], H[clip(y1-y0)], W[clip(x1-x0)]]`` (``4 * coordinate_size + 2 * shape_size`` wide,
    which must equal the model width) to ``x``.  Heights/widths are clipped to ``0..max_2d - 1`` as HF does."""

    def __init__(self, coordinate_size: int = 128, shape_size: int = 128, max_2d_positions: int = 1024,
                 init_std: float = 0.02):
        super().__init__()
        for name, v in (("coordinate_size", coordinate_size), ("shape_size", shape_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(max_2d_positions, bool) or not isinstance(max_2d_positions, int) or max_2d_positions <= MAX_COORD:
            raise ValueError(f"max_2d_positions must be an int > {MAX_COORD}, got {max_2d_positions!r}")
        self.coordinate_size, self.shape_size, self.max_2d_positions = coordinate_size, shape_size, max_2d_positions
        self.dim = 4 * coordinate_size + 2 * shape_size
        self.x_position_embeddings = nn.Embedding(max_2d_positions, coordinate_size)
        self.y_position_embeddings = nn.Embedding(max_2d_positions, coordinate_size)
        self.h_position_embeddings = nn.Embedding(max_2d_positions, shape_size)
        self.w_position_embeddings = nn.Embedding(max_2d_positions, shape_size)
        for m in (self.x_position_embeddings, self.y_position_embeddings, self.h_position_embeddings,
                  self.w_position_embeddings):
            nn.init.normal_(m.weight, std=init_std)

    def layout(self, boxes: Tensor) -> Tensor:
        """``[b, n, 4 * coordinate_size + 2 * shape_size]``."""
        bx = check_boxes(boxes).to(self.x_position_embeddings.weight.device)
        x0, y0, x1, y1 = bx.unbind(-1)
        top = self.max_2d_positions - 1
        return torch.cat([self.x_position_embeddings(x0), self.y_position_embeddings(y0),
                          self.x_position_embeddings(x1), self.y_position_embeddings(y1),
                          self.h_position_embeddings((y1 - y0).clamp(0, top)),
                          self.w_position_embeddings((x1 - x0).clamp(0, top))], dim=-1)

    def embed(self, x: Tensor, pos: Optional[Positions]) -> Tensor:
        boxes = _boxes_of(pos, "LayoutLMv3SpatialEmbedding")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has width {x.shape[-1]} but the spatial embedding is 4 * {self.coordinate_size} + "
                             f"2 * {self.shape_size} = {self.dim} wide")
        return x + self.layout(boxes).to(x.dtype)


def roberta_position_ids(input_ids: Tensor, padding_idx: int = 1) -> Tensor:
    """RoBERTa/LayoutLMv3 1D positions: real tokens ``padding_idx + 1, +2, ...`` (counting real tokens only), padding
    tokens (``input_ids == padding_idx``) get ``padding_idx``.  ``[b, n]`` int64."""
    if not isinstance(input_ids, Tensor) or input_ids.is_floating_point():
        raise ValueError("input_ids must be an int Tensor [b, n]")
    real = input_ids.ne(padding_idx).long()
    return real.cumsum(-1) * real + padding_idx


def layoutlmv3_bucket(relative_position: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """LayoutLMv3's ``relative_position_bucket`` (bidirectional T5 buckets) of ``key - query``."""
    return t5_bucket(relative_position, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance)


@register_pe("layoutlmv3_bias", positions="boxes", paper="Huang et al., LayoutLMv3: Pre-training for Document AI "
             "with Unified Text and Image Masking, ACM MM 2022, arXiv:2204.08387")
class LayoutLMv3SpatialBias(PositionalEncoding):
    """LayoutLMv3 spatial-aware relative attention bias on the ``bias`` hook (see the module docstring).

    Args:
        num_heads: heads ``H``.
        rel_pos_bins, max_rel_pos: 1D buckets on ``pos.ids`` (32, 128); ids default to ``0..n-1``.
        rel_2d_pos_bins, max_rel_2d_pos: 2D buckets on x0 and y1 of ``pos.boxes`` (64, 256).
        spatial: add the 2D terms (HF ``has_spatial_attention_bias``); without boxes in ``pos`` they raise.

    Tables: ``rel_pos_bias.weight [H, 32]``, ``rel_pos_x_bias.weight [H, 64]``, ``rel_pos_y_bias.weight [H, 64]``
    (HF ``encoder.rel_pos_*`` keys).  ``bias`` returns float32 ``[b, H, n, n]``; inside ``with pe.shared(pos):`` it is
    built once and reused by every layer that shares this module.
    """

    def __init__(self, num_heads: int, rel_pos_bins: int = 32, max_rel_pos: int = 128, rel_2d_pos_bins: int = 64,
                 max_rel_2d_pos: int = 256, spatial: bool = True, init_std: float = 0.02):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        # validates the bucket arguments with clear errors
        t5_bucket(torch.zeros(1, dtype=torch.long), True, rel_pos_bins, max_rel_pos)
        t5_bucket(torch.zeros(1, dtype=torch.long), True, rel_2d_pos_bins, max_rel_2d_pos)
        self.num_heads, self.spatial = num_heads, bool(spatial)
        self.rel_pos_bins, self.max_rel_pos = rel_pos_bins, max_rel_pos
        self.rel_2d_pos_bins, self.max_rel_2d_pos = rel_2d_pos_bins, max_rel_2d_pos
        self.rel_pos_bias = nn.Linear(rel_pos_bins, num_heads, bias=False)
        self.rel_pos_x_bias = nn.Linear(rel_2d_pos_bins, num_heads, bias=False) if spatial else None
        self.rel_pos_y_bias = nn.Linear(rel_2d_pos_bins, num_heads, bias=False) if spatial else None
        for m in (self.rel_pos_bias, self.rel_pos_x_bias, self.rel_pos_y_bias):
            if m is not None:
                nn.init.normal_(m.weight, std=init_std)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, 1d={self.rel_pos_bins}/{self.max_rel_pos}, "
                f"2d={self.rel_2d_pos_bins}/{self.max_rel_2d_pos}, spatial={self.spatial}")


    @staticmethod
    def _lookup(values: Tensor, table: Tensor, num_buckets: int, max_distance: int) -> Tensor:
        # values [b, n] -> table[:, bucket(v_j - v_i)] as [b, H, n, n]
        rel = values[..., None, :] - values[..., :, None]                       # [b, i, j] = v_j - v_i
        ids = layoutlmv3_bucket(rel, num_buckets, max_distance)                  # [b, n, n]
        return table.float().t()[ids].movedim(-1, -3)                            # [b, H, n, n]

    def full_bias(self, n: int, pos: Optional[Positions], device) -> Tensor:
        """The unscaled bucket sum ``R1 + Rx + Ry`` ``[b|1, H, n, n]`` (float32)."""
        ids = None if pos is None else pos.ids
        if ids is None:
            ids = torch.arange(n, device=device)[None]
        if ids.ndim == 1:
            ids = ids[None]
        if ids.shape[-1] != n:
            raise ValueError(f"pos.ids has {ids.shape[-1]} positions but the attention sees {n} tokens")
        out = self._lookup(ids.to(device).round().long() if ids.is_floating_point() else ids.to(device).long(),
                           self.rel_pos_bias.weight, self.rel_pos_bins, self.max_rel_pos)
        if self.spatial:
            boxes = check_boxes(_boxes_of(pos, "LayoutLMv3SpatialBias(spatial=True)")).to(device)
            if boxes.ndim == 2:
                boxes = boxes[None]
            if boxes.shape[-2] != n:
                raise ValueError(f"Positions.boxes describe {boxes.shape[-2]} tokens but the attention sees {n}")
            out = out + self._lookup(boxes[..., 0], self.rel_pos_x_bias.weight, self.rel_2d_pos_bins,
                                     self.max_rel_2d_pos)
            out = out + self._lookup(boxes[..., 3], self.rel_pos_y_bias.weight, self.rel_2d_pos_bins,
                                     self.max_rel_2d_pos)
        return out

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, nq, d], k [b, h, nk, d]; an encoder: nq == nk
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q has {q.shape[1]} heads but LayoutLMv3SpatialBias has num_heads={self.num_heads}")
        if q.shape[-2] != k.shape[-2]:
            raise ValueError("LayoutLMv3SpatialBias is an encoder bias: queries and keys must be the same tokens")
        return self._forward_memo.get(pos, lambda: self.full_bias(k.shape[-2], pos, q.device) * scale)
