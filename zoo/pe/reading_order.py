"""ROPE, reading-order equivariant positional encoding: Lee et al., "ROPE: Reading Order Equivariant Positional
Encoding for Graph-based Document Information Extraction", ACL 2021 (arXiv 2106.10786).  **Paper-only**: no public
code; what follows is our reading, a spec choice stated here and tested as such.

A word graph over the page (k nearest neighbours of the box centres, or a beta-skeleton of the centres) gives each
target word ``i`` its neighbours ``N(i)``.  The code of neighbour ``j`` is its *signed rank in reading order among
the target and its neighbours*, relative to the target::

    sort {i} u N(i) by the reading-order index (OCR serialisation; ties by token index)
    code(i, j) = rank(j) - rank(i)          neighbours read before i: -1 (the nearest before), -2, ...
                                            neighbours read after i:  +1, +2, ...       (never 0)

The codes depend only on the relative order of the target's neighbourhood, so adding a constant to every order
index, or reordering words outside the neighbourhood, leaves them unchanged (the equivariance the paper is named
for); they are unique within a neighbourhood.  A code is embedded sinusoidally (``[sin(c * inv), cos(c * inv)]``,
``inv = 1 / base^(arange(0, e, 2) / e)``) and added to the messages of a graph layer (`ReadingOrderGraphConv`).
`ReadingOrderBias` also offers the codes on the attention ``bias`` hook: a per-head linear read-out of the code
embedding on graph edges, attention restricted to the graph (plus self) or a learned per-head "not a neighbour" bias.

Graphs are computed in float32 from ``boxes [b, n, 4]`` (0..1000); padding tokens (``mask`` False) are neither
targets nor neighbours.  The beta-skeleton is the lune-based one (beta >= 1; beta = 1 is the Gabriel graph), on box
centres, ``O(n^3)`` work in row chunks.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe
from .layout import check_boxes

__all__ = ["box_centers", "knn_graph", "beta_skeleton_graph", "adjacency_to_neighbors", "reading_order_codes",
           "reading_order_embedding", "ReadingOrderGraphConv", "ReadingOrderBias"]


def box_centers(boxes: Tensor) -> Tensor:
    """``[b, n, 4]`` boxes (0..1000) -> float32 centres ``[b, n, 2]`` ``((x0 + x1) / 2, (y0 + y1) / 2)``."""
    bx = check_boxes(boxes).float()
    return torch.stack([(bx[..., 0] + bx[..., 2]) / 2, (bx[..., 1] + bx[..., 3]) / 2], dim=-1)


def _mask_of(mask: Optional[Tensor], b: int, n: int, device) -> Tensor:
    if mask is None:
        return torch.ones(b, n, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor) or mask.shape[-1] != n:
        raise ValueError(f"mask must be [b, n] with n = {n}, got "
                         f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    return mask.to(device).bool().expand(b, n)


def _centers(centers: Tensor) -> Tensor:
    if not isinstance(centers, Tensor) or centers.ndim not in (2, 3) or centers.shape[-1] != 2:
        raise ValueError(f"centers must be [b, n, 2], got "
                         f"{tuple(centers.shape) if isinstance(centers, Tensor) else type(centers).__name__}")
    return (centers[None] if centers.ndim == 2 else centers).float()


def knn_graph(centers: Tensor, k: int, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The ``k`` nearest other real tokens of every token (Euclidean on ``centers [b, n, 2]``; ties by index).

    Returns ``idx [b, n, k]`` (long) and ``valid [b, n, k]`` (False where a row has fewer than ``k`` real
    neighbours, and for every slot of a padding token)."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    c = _centers(centers)
    b, n, _ = c.shape
    real = _mask_of(mask, b, n, c.device)
    d = torch.cdist(c, c)                                                        # [b, n, n]
    eye = torch.eye(n, dtype=torch.bool, device=c.device)
    bad = eye[None] | ~real[:, None, :]
    d = d.masked_fill(bad, float("inf"))
    kk = min(k, n)
    dist, idx = torch.sort(d, dim=-1, stable=True)
    idx, dist = idx[..., :kk], dist[..., :kk]
    valid = torch.isfinite(dist) & real[..., None]
    if kk < k:                                                                   # fewer tokens than k
        pad = k - kk
        idx = torch.cat([idx, idx.new_zeros(b, n, pad)], dim=-1)
        valid = torch.cat([valid, valid.new_zeros(b, n, pad)], dim=-1)
    return idx.masked_fill(~valid, 0), valid


def beta_skeleton_graph(centers: Tensor, beta: float = 1.0, mask: Optional[Tensor] = None,
                        chunk_elems: int = 1 << 24) -> Tensor:
    """Lune-based beta-skeleton (beta >= 1) of ``centers [b, n, 2]``: ``adj [b, n, n]`` bool, symmetric.

    ``p ~ q`` iff no third real point lies strictly inside the lune of the two disks of radius ``beta * |pq| / 2``
    centred at ``(1 - beta/2) p + (beta/2) q`` and ``(beta/2) p + (1 - beta/2) q``; beta = 1 is the Gabriel graph
    (the disk with diameter pq).  Coincident centres are joined."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 1:
        raise ValueError(f"beta must be a number >= 1 (lune-based beta-skeleton), got {beta!r}")
    c = _centers(centers).double()
    b, n, _ = c.shape
    real = _mask_of(mask, b, n, c.device)
    adj = torch.zeros(b, n, n, dtype=torch.bool, device=c.device)
    rows = max(1, chunk_elems // max(1, n * n))
    for s in range(0, n, rows):
        p = c[:, s:s + rows, None, :]                                            # [b, r, 1, 2]
        q = c[:, None, :, :]                                                     # [b, 1, n, 2]
        rad = beta * (p - q).norm(dim=-1) / 2                                    # [b, r, n]
        c1 = (1 - beta / 2) * p + (beta / 2) * q                                 # [b, r, n, 2]
        c2 = (beta / 2) * p + (1 - beta / 2) * q
        pts = c[:, None, None, :, :]                                             # [b, 1, 1, n, 2] third points
        tol = 1e-9 * (1 + rad[..., None] ** 2)
        in1 = ((pts - c1[..., None, :]) ** 2).sum(-1) < rad[..., None] ** 2 - tol  # [b, r, n, n]
        in2 = ((pts - c2[..., None, :]) ** 2).sum(-1) < rad[..., None] ** 2 - tol
        inside = in1 & in2 & real[:, None, None, :]
        adj[:, s:s + rows] = ~inside.any(-1)
    eye = torch.eye(n, dtype=torch.bool, device=c.device)
    return adj & ~eye & real[:, :, None] & real[:, None, :]


def adjacency_to_neighbors(adj: Tensor) -> Tuple[Tensor, Tensor]:
    """``adj [b, n, n]`` bool -> padded neighbour lists ``idx [b, n, K]``, ``valid [b, n, K]``, K = the largest
    degree (at least 1), neighbours in index order."""
    if not isinstance(adj, Tensor) or adj.ndim != 3 or adj.shape[-1] != adj.shape[-2]:
        raise ValueError(f"adj must be a [b, n, n] bool tensor, got "
                         f"{tuple(adj.shape) if isinstance(adj, Tensor) else type(adj).__name__}")
    adj = adj.bool()
    kmax = max(1, int(adj.sum(-1).max())) if adj.numel() else 1
    n = adj.shape[-1]
    # sort keys: neighbours first (by index), non-neighbours after
    key = torch.where(adj, torch.arange(n, device=adj.device), torch.full_like(adj, n, dtype=torch.long))
    key, idx = key.sort(dim=-1, stable=True)
    idx, valid = idx[..., :kmax], key[..., :kmax] < n
    return idx.masked_fill(~valid, 0), valid


def reading_order_codes(order: Tensor, idx: Tensor, valid: Tensor) -> Tensor:
    """Signed reading-order ranks (module docstring) of the neighbours ``idx [b, n, K]`` of every target.

    ``order``: ``[b, n]`` (or ``[n]``) reading-order index of each token (int or float; ties broken by token index).
    Returns long ``[b, n, K]``: ``rank(j) - rank(i)`` in the sorted neighbourhood ``{i} u N(i)``, 0 where not valid.
    """
    if not isinstance(order, Tensor) or order.ndim not in (1, 2):
        raise ValueError(f"order must be a [b, n] tensor of reading-order indices, got "
                         f"{tuple(order.shape) if isinstance(order, Tensor) else type(order).__name__}")
    if idx.shape != valid.shape or idx.ndim != 3:
        raise ValueError(f"idx and valid must both be [b, n, K], got {tuple(idx.shape)} and {tuple(valid.shape)}")
    b, n, kk = idx.shape
    order = (order[None] if order.ndim == 1 else order).to(idx.device).double().expand(b, n)
    me = torch.arange(n, device=idx.device).view(1, n, 1).expand(b, n, 1)
    members = torch.cat([me, idx], dim=-1)                                       # [b, n, K+1]
    ok = torch.cat([torch.ones_like(valid[..., :1]), valid.bool()], dim=-1)      # [b, n, K+1]
    o = order.gather(1, members.reshape(b, -1)).view(b, n, kk + 1)              # [b, n, K+1]
    # before[a, c]: member c is read before member a (order, then token index)
    oa, oc = o[..., :, None], o[..., None, :]
    ia, ic = members[..., :, None], members[..., None, :]
    before = (oc < oa) | ((oc == oa) & (ic < ia))                                # [b, n, K+1, K+1]
    rank = (before & ok[..., None, :]).sum(-1)                                   # [b, n, K+1]
    codes = rank[..., 1:] - rank[..., :1]
    return codes.masked_fill(~valid.bool(), 0)


def reading_order_embedding(codes: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[..., dim]`` float32 of integer codes: ``cat(sin(c * inv), cos(c * inv))``,
    ``inv = 1 / base^(arange(0, dim, 2) / dim)`` (float32 whatever the autocast dtype)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even int, got {dim!r}")
    inv = 1.0 / (float(base) ** (torch.arange(0, dim, 2, dtype=torch.float64, device=codes.device) / dim))
    with no_autocast(codes.device):
        ang = codes.float()[..., None] * inv.float()
        return torch.cat([ang.sin(), ang.cos()], dim=-1)


class ReadingOrderGraphConv(nn.Module):
    """One message-passing layer with ROPE codes on the edges (post-norm residual)::

        m_ij = act( W_src h_j + W_dst h_i + W_code rope(code_ij) )       for j in N(i)
        h_i' = LayerNorm( h_i + W_out mean_j m_ij )

    ``forward(h [b, n, c], idx [b, n, K], valid [b, n, K], codes [b, n, K])``.  Rows without neighbours get a zero
    message."""

    def __init__(self, dim: int, code_dim: int = 64, hidden: Optional[int] = None, base: float = 10000.0,
                 norm_eps: float = 1e-5):
        super().__init__()
        hidden = hidden or dim
        self.code_dim, self.base = code_dim, base
        reading_order_embedding(torch.zeros(1, dtype=torch.long), code_dim, base)   # validates code_dim
        self.src = nn.Linear(dim, hidden)
        self.dst = nn.Linear(dim, hidden, bias=False)
        self.code = nn.Linear(code_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, h: Tensor, idx: Tensor, valid: Tensor, codes: Tensor) -> Tensor:
        b, n, c = h.shape
        kk = idx.shape[-1]
        src = self.src(h)                                                        # [b, n, hid]
        nbr = src.gather(1, idx.reshape(b, n * kk, 1).expand(-1, -1, src.shape[-1])).view(b, n, kk, -1)
        emb = reading_order_embedding(codes, self.code_dim, self.base).to(h.dtype)   # [b, n, K, e]
        m = F.gelu(nbr + self.dst(h)[:, :, None] + self.code(emb))               # [b, n, K, hid]
        w = valid.to(h.dtype)[..., None]
        agg = (m * w).sum(2) / w.sum(2).clamp_min(1.0)                           # [b, n, hid]
        return self.norm(h + self.out(agg))


@register_pe("reading_order", positions="graph", paper="Lee et al., ROPE: Reading Order Equivariant Positional "
             "Encoding for Graph-based Document Information Extraction, ACL 2021, arXiv:2106.10786")
class ReadingOrderBias(PositionalEncoding):
    """ROPE codes on the attention ``bias`` hook: graph attention over a k-NN word graph of ``pos.boxes``.

    ``bias[b, h, i, j] = w_h . rope(code_ij)`` for graph edges (``k`` nearest neighbours of box centres; reading order
    = ``pos.ids``, default token index), 0 on the diagonal, and off the graph ``-inf`` (``restrict=True``: attention
    only to self and neighbours; ``finfo.min / 2`` stands for it) or a learned per-head ``far`` scalar.  Built once per forward inside
    ``with pe.shared():``."""

    def __init__(self, num_heads: int, k: int = 8, code_dim: int = 32, restrict: bool = True,
                 base: float = 10000.0):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        reading_order_embedding(torch.zeros(1, dtype=torch.long), code_dim, base)
        self.num_heads, self.k, self.code_dim, self.restrict, self.base = num_heads, k, code_dim, bool(restrict), base
        self.code_proj = nn.Linear(code_dim, num_heads, bias=False)
        nn.init.normal_(self.code_proj.weight, std=0.02)
        self.far = None if restrict else nn.Parameter(torch.zeros(num_heads))


    def graph(self, pos: Positions) -> Tuple[Tensor, Tensor, Tensor]:
        """``idx, valid, codes`` ``[b, n, k]`` from ``pos.boxes`` (k-NN), ``pos.ids`` and ``pos.mask``."""
        if pos is None or pos.boxes is None:
            raise ValueError("ReadingOrderBias needs Positions.boxes [b, n, 4], which the input does not provide")
        boxes = pos.boxes if pos.boxes.ndim == 3 else pos.boxes[None]
        b, n = boxes.shape[:2]
        idx, valid = knn_graph(box_centers(boxes), self.k, pos.mask)
        order = pos.ids if pos.ids is not None else torch.arange(n, device=idx.device)
        return idx, valid, reading_order_codes(order, idx, valid)

    def _build(self, pos: Positions, device) -> Tensor:
        idx, valid, codes = self.graph(pos)
        idx, valid, codes = idx.to(device), valid.to(device), codes.to(device)
        b, n, kk = idx.shape
        vals = self.code_proj(reading_order_embedding(codes, self.code_dim, self.base))   # [b, n, k, H]
        fill = torch.finfo(torch.float32).min / 2 if self.restrict else 0.0
        out = torch.full((b, n, n, self.num_heads), fill, device=device)
        if not self.restrict:
            out = out + self.far.float()
        out = out.scatter(2, idx[..., None].expand(-1, -1, -1, self.num_heads),
                          torch.where(valid[..., None], vals, out.gather(2, idx[..., None].expand(
                              -1, -1, -1, self.num_heads))))
        eye = torch.eye(n, dtype=torch.bool, device=device)[None, :, :, None]
        out = out.masked_fill(eye, 0.0)
        return out.permute(0, 3, 1, 2)                                           # [b, H, n, n]

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q has {q.shape[1]} heads but ReadingOrderBias has num_heads={self.num_heads}")
        return self._forward_memo.get(pos, lambda: self._build(pos, q.device))
