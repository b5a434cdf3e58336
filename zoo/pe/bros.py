"""BROS relative box encoding, ``pe_type="crel"``: Hong et al., "BROS: A Pre-trained Language Model Focusing on
Text and Layout for Better Key Information Extraction from Documents", AAAI 2022 (arXiv 2108.04539); official
clovaai/bros @eb3aa51 ``bros/modeling_bros.py``, checked against HF transformers 5.24 ``BrosModel``.

::

    boxes [b, n, 4] (x0, y0, x1, y1), 0..1000  --expand [0,1,2,1,2,3,0,3]-->  8 corner coords (TL, TR, BR, BL)
        -> c = boxes / 1000 * bbox_scale            (HF: inputs normalised to 0..1, times bbox_scale = 100;
                                                     here 0..1 float boxes are refused by ``check_boxes``)
    rel[b, i, j, :] = c[b, j] - c[b, i]                                           [b, n, n, 8]  (key - query)
    S = cat_t( [sin(rel_t * inv), cos(rel_t * inv)] )     inv = 1 / 10000^(arange(0, e, 2) / e), e = hidden/4/8
                                                                                  [b, n, n, hidden/4]
    P = bbox_projection(S)          Linear(hidden/4 -> head_dim, bias=False)    [b, n, n, head_dim]
    logits[b, h, i, j] = (q_i . k_j + q_i . P_ij) / sqrt(D)

``P`` is computed once per forward and shared by all layers and heads (the "document memory": ``[b, n, n, D]``);
open ``with pe.shared(pos):`` around the layers to get that (outside, every layer rebuilds it).  On our ``bias``
hook the term is ``scale * einsum('bhid,bijd->bhij', q, P)``, added to the attention's ``q.k * scale``.
The x and y sinusoid tables of BROS are identical fixed tables (``x_pos_emb`` / ``y_pos_emb``), so one suffices.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe
from .layout import check_boxes

__all__ = ["BROS_CORNERS", "bros_corners", "bros_inv_freq", "bros_sinusoid", "BrosRelativeBias"]

#: (x0, y0, x1, y0, x1, y1, x0, y1): top-left, top-right, bottom-right, bottom-left
BROS_CORNERS = (0, 1, 2, 1, 2, 3, 0, 3)


def bros_corners(boxes: Tensor) -> Tensor:
    """``[..., 4]`` ``(x0, y0, x1, y1)`` -> ``[..., 8]`` quad corners (HF BROS's expansion); 8-value quads pass."""
    if boxes.shape[-1] == 8:
        return boxes
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 (x0, y0, x1, y1) or 8 (quad) values, got shape {tuple(boxes.shape)}")
    return boxes[..., list(BROS_CORNERS)]


def bros_inv_freq(dim_1d: int, device=None) -> Tensor:
    """``1 / 10000^(arange(0, e, 2) / e)`` in float32, computed as HF/official BROS do (float32 power).  ``[e/2]``"""
    if isinstance(dim_1d, bool) or not isinstance(dim_1d, int) or dim_1d <= 0 or dim_1d % 2:
        raise ValueError(f"dim_1d must be a positive even int, got {dim_1d!r}")
    return 1 / (10000 ** (torch.arange(0.0, dim_1d, 2.0, device=device) / dim_1d))


def bros_sinusoid(rel: Tensor, dim_1d: int) -> Tensor:
    """Per-coordinate ``[sin(r * inv), cos(r * inv)]`` concatenated over the last axis: ``[..., c]`` ->
    ``[..., c * dim_1d]`` float32 (coordinate-major: coordinate 0's ``dim_1d`` values first)."""
    inv = bros_inv_freq(dim_1d, rel.device)                                      # [e/2]
    with no_autocast(rel.device):
        ang = rel.float()[..., None] * inv                                       # [..., c, e/2]
        emb = torch.cat([ang.sin(), ang.cos()], dim=-1)                          # [..., c, e]
    return emb.flatten(-2)                                                       # [..., c * e]


@register_pe("bros", positions="boxes", paper="Hong et al., BROS: A Pre-trained Language Model Focusing on Text and "
             "Layout for Better Key Information Extraction from Documents, AAAI 2022, arXiv:2108.04539",
             geometry={"hidden_size": "dim"})
class BrosRelativeBias(PositionalEncoding):
    """BROS ``crel`` box encoding on the ``bias`` hook (see the module docstring).

    Args:
        hidden_size: model width; the sinusoid is ``hidden_size // 4`` wide (``dim_bbox_sinusoid_emb_2d``).
        head_dim: ``D``; the projection maps to it (``dim_bbox_projection``).
        dim_bbox: 8 (quad corners; 4-value boxes are expanded).
        bbox_scale: 100 (HF/official): relative coordinates are ``(box_j - box_i) / 1000 * bbox_scale``.

    ``bbox_projection.weight [head_dim, hidden/4]`` is HF's ``bbox_embeddings.bbox_projection.weight``.
    """

    def __init__(self, hidden_size: int, head_dim: int, dim_bbox: int = 8, bbox_scale: float = 100.0):
        super().__init__()
        for name, v in (("hidden_size", hidden_size), ("head_dim", head_dim), ("dim_bbox", dim_bbox)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if dim_bbox not in (4, 8):
            raise ValueError(f"dim_bbox must be 4 or 8, got {dim_bbox}")
        dim_2d = hidden_size // 4
        if dim_2d % dim_bbox or (dim_2d // dim_bbox) % 2:
            raise ValueError(f"hidden_size // 4 = {dim_2d} must split into {dim_bbox} even-sized coordinate "
                             f"sinusoids")
        if isinstance(bbox_scale, bool) or not isinstance(bbox_scale, (int, float)) or not bbox_scale > 0:
            raise ValueError(f"bbox_scale must be a positive number, got {bbox_scale!r}")
        self.hidden_size, self.head_dim, self.dim_bbox, self.bbox_scale = hidden_size, head_dim, dim_bbox, bbox_scale
        self.dim_2d, self.dim_1d = dim_2d, dim_2d // dim_bbox
        self.bbox_projection = nn.Linear(dim_2d, head_dim, bias=False)

    def extra_repr(self) -> str:
        return f"sinusoid={self.dim_bbox}x{self.dim_1d}, head_dim={self.head_dim}, bbox_scale={self.bbox_scale:g}"


    def scaled_coords(self, boxes: Tensor) -> Tensor:
        """``[b, n, 4]`` boxes in 0..1000 -> ``[b, n, dim_bbox]`` float32 ``boxes / 1000 * bbox_scale``."""
        bx = check_boxes(boxes)
        if self.dim_bbox == 8:
            bx = bros_corners(bx)
        return (bx.float() / 1000.0) * self.bbox_scale

    def memory(self, boxes: Tensor) -> Tensor:
        """``P [b, n, n, head_dim]``: ``P[b, i, j] = proj(sinusoid(c_j - c_i))``."""
        c = self.scaled_coords(boxes).to(self.bbox_projection.weight.device)     # [b, n, 8]
        if c.ndim == 2:
            c = c[None]
        rel = c[:, None, :, :] - c[:, :, None, :]                                # [b, i, j, 8] = c_j - c_i
        return self.bbox_projection(bros_sinusoid(rel, self.dim_1d).to(self.bbox_projection.weight.dtype))

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, n, d] -> [b, h, n, n]
        if pos is None or pos.boxes is None:
            raise ValueError("BrosRelativeBias needs Positions.boxes [b, n, 4], which the input does not provide")
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"q head dim {q.shape[-1]} does not match BrosRelativeBias head_dim={self.head_dim}")
        n = q.shape[-2]
        if q.shape[-2] != k.shape[-2] or pos.boxes.shape[-2] != n:
            raise ValueError(f"BrosRelativeBias is an encoder bias: queries, keys and Positions.boxes must describe "
                             f"the same tokens, got {q.shape[-2]}, {k.shape[-2]} and {pos.boxes.shape[-2]}")
        mem = self._forward_memo.get(pos, lambda: self.memory(pos.boxes))                # [b, n, n, d]
        return torch.einsum("bhid,bijd->bhij", q, mem.to(q.dtype)) * scale
