"""iRPE: image relative position encoding (Wu et al., ICCV 2021).

"Rethinking and Improving Relative Position Encoding for Vision Transformer", Kan Wu, Houwen Peng, Minghao Chen,
Jianlong Fu, Hongyang Chao; https://arxiv.org/abs/2107.14222. Verified against the official code,
microsoft/Cream @4a13c40 ``iRPE/DeiT-with-iRPE/irpe.py`` (bucket ids, table layouts and key names) and
``rpe_vision_transformer.py`` (where the encodings enter attention); ``tests/pe/test_irpe.py`` checks every formula
against naive loops written from the paper.

A 2D offset ``(dr, dc)`` between query and key patches is mapped to a bucket by the piecewise index function ``g``
(Eq. 18: exact near 0, logarithmic further away, clipped at ``beta``), and each bucket owns a learned vector:

    bucket[i, j]  = product:   (g(dr) + B) * (2B + 1) + (g(dc) + B)         B = int(beta), 2D table of (2B+1)^2
                    euclidean: g(round(sqrt(dr^2 + dc^2))) + B
                    quant:     g(dr^2 + dc^2) + B
                    cross:     rows g(dr) + B and cols g(dc) + B, two tables, outputs summed
                    prefix tokens (cls, registers; ``skip``): one extra bucket, the last one

    contextual on keys  : logits[b,h,i,j] += (q_i * scale) . W_k[h, :, bucket[i, j]]          W_k (H|1, D, nb)
    contextual on queries: logits[b,h,i,j] += (k_j * scale) . W_q[h, :, bucket[j, i]]          W_q (H|1, D, nb)
    contextual on values : out[b,h,i,:]    += sum_j attn[b,h,i,j] W_v[h, bucket[i, j], :]     W_v (H|1, nb, D)
    bias mode (q/k)      : logits[b,h,i,j] += T[h, bucket[i, j]]                                T   (H|1, nb)

Tables are zero-initialised (so a fresh iRPE is plain attention) and named ``lookup_table_weight`` /
``lookup_table_bias`` as in the official code; with ``IRPE`` at ``blocks.i.attn.pe`` the official key
``blocks.i.attn.rpe_k.lookup_table_weight`` becomes ``blocks.i.attn.pe.rpe_k.lookup_table_weight``.

`IRPE` on queries/keys is a logit bias, so attention keeps its fused SDPA path; only iRPE on values reads the
attention weights (`IRPE(rpe_on="...v")` is an `IRPEWithValue`, which alone overrides ``value``). Long inputs attend
in query chunks: ``bias_rows`` builds a block's rows from the ``[2h-1, 2w-1]`` table of offset buckets, never the
``[n, n]`` ids or bias. ``flex_attention`` runs the whole attention through FlexAttention (contextual product iRPE on
queries/keys; buckets computed in the kernel, `zoo.nn.flex`), or returns None where it does not apply.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding
from .registry import register_pe

__all__ = ["piecewise_index", "irpe_bucket_ids", "irpe_num_buckets", "IRPETable", "IRPECrossTable", "IRPE",
           "IRPEWithValue", "IRPE_METHODS"]

IRPE_METHODS = ("euclidean", "quant", "product", "cross")
_BUCKET_METHODS = ("euclidean", "quant", "product", "cross_rows", "cross_cols")
_ALIASES = {"euc": "euclidean", "euclid": "euclidean"}
_MODES = {"bias": "bias", "contextual": "contextual", "ctx": "contextual"}


def _method_name(method: str) -> str:
    m = str(method).lower()
    return _ALIASES.get(m, m)


# ---- bucket ids -------------------------------------------------------------------------------------------------

def piecewise_index(rp: Tensor, alpha: float, beta: float, gamma: float) -> Tensor:
    """The piecewise index function ``g`` of the paper (Eq. 18), elementwise, as a long tensor.

        g(x) = round(x)                                                                  |x| <= alpha
        g(x) = sign(x) * min(beta, round(alpha + ln(|x|/alpha) / ln(gamma/alpha) * (beta - alpha)))   otherwise

    ``round`` is round-half-to-even (``torch.round``) and the clip to a fractional ``beta`` truncates to
    ``int(beta)`` on the cast to long, as in the official code. Integer inputs are evaluated in float32 (the
    official code divides a long tensor by a Python float), float inputs in their own dtype.
    """
    x = rp if rp.is_floating_point() else rp.to(torch.float32)
    ax = x.abs()
    near = ax <= alpha
    far = alpha + torch.log(ax.clamp_min(alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    far = torch.sign(x) * far.round().clamp(max=beta)
    return torch.where(near, x.round(), far).to(torch.long)


def irpe_num_buckets(method: str, ratio: float = 1.9, skip: int = 0) -> int:
    """Table size: ``(2B+1)^2`` for product, ``2B+1`` otherwise (per direction for cross), ``+1`` if ``skip > 0``;
    ``B = int(2 * ratio)``."""
    method = _method_name(method)
    if method not in _BUCKET_METHODS + ("cross",):
        raise ValueError(f"unknown iRPE method {method!r}; expected one of {IRPE_METHODS + _BUCKET_METHODS[3:]}")
    b = int(2 * ratio)
    n = (2 * b + 1) ** 2 if method == "product" else 2 * b + 1
    return n + (1 if skip > 0 else 0)


def _ordinary_tensors() -> bool:
    """False while torch.export, torch.onnx.export or torch.compile trace (their tensors are fake or functional):
    what is built then must not be cached for later eager calls."""
    return not torch.compiler.is_compiling()


def _bucket_ids(method: str, height: int, width: int, skip: int, ratio: float,
                device: torch.device) -> Tuple[Tensor, int]:
    """`irpe_bucket_ids`, cached unless tensors are being traced."""
    if _ordinary_tensors():
        return _bucket_ids_cached(method, height, width, skip, ratio, device)
    return _bucket_ids_cached.__wrapped__(method, height, width, skip, ratio, device)


def _bucket_of_offsets(method: str, dr: Tensor, dc: Tensor, ratio: float) -> Tensor:
    """Bucket (without the prefix bucket) of integer grid offsets ``dr, dc`` (query - key), elementwise, long."""
    alpha, beta, gamma = 1.0 * ratio, 2.0 * ratio, 8.0 * ratio
    b = int(beta)
    g = functools.partial(piecewise_index, alpha=alpha, beta=beta, gamma=gamma)
    if method == "product":
        return (g(dr) + b) * (2 * b + 1) + (g(dc) + b)
    if method == "euclidean":
        return g((dr * dr + dc * dc).float().sqrt().round()) + b
    if method == "quant":
        return g(dr * dr + dc * dc) + b
    if method == "cross_rows":
        return g(dr) + b
    return g(dc) + b                                                            # cross_cols


@functools.lru_cache(maxsize=32)
def _bucket_ids_cached(method: str, height: int, width: int, skip: int, ratio: float,
                       device: torch.device) -> Tuple[Tensor, int]:
    # cached tensors must be ordinary tensors even when first asked for under torch.inference_mode()
    with torch.inference_mode(False), torch.no_grad():
        rows = torch.arange(height, device=device).repeat_interleave(width)     # [L]   row-major grid
        cols = torch.arange(width, device=device).repeat(height)                # [L]
        dr = rows[:, None] - rows[None, :]                                      # [L, L] query - key
        dc = cols[:, None] - cols[None, :]                                      # [L, L]
        ids = _bucket_of_offsets(method, dr, dc, ratio)
        num_buckets = irpe_num_buckets(method, ratio, 0)
        if skip > 0:
            n = skip + height * width
            full = torch.full((n, n), num_buckets, dtype=torch.long, device=device)   # prefix rows/cols
            full[skip:, skip:] = ids
            ids, num_buckets = full, num_buckets + 1
        return ids.contiguous(), num_buckets


def irpe_bucket_ids(method: str, height: int, width: int, skip: int = 0, ratio: float = 1.9,
                    device=None) -> Tuple[Tensor, int]:
    """Bucket id of every (query, key) pair of a row-major ``height x width`` grid after ``skip`` prefix tokens.

    Returns ``(ids [skip + h*w, skip + h*w] long, num_buckets)``; pairs involving a prefix token get the extra
    bucket ``num_buckets - 1``. ``method`` is one of euclidean (alias euc), quant, product, cross_rows,
    cross_cols. Cached per (method, h, w, skip, ratio, device); treat the result as read-only.
    """
    method = _method_name(method)
    if method not in _BUCKET_METHODS:
        raise ValueError(f"unknown iRPE bucket method {method!r}; expected one of {_BUCKET_METHODS}")
    if height <= 0 or width <= 0:
        raise ValueError(f"iRPE grid size must be positive, got {height}x{width}")
    if skip < 0:
        raise ValueError(f"skip (prefix tokens) must be >= 0, got {skip}")
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _bucket_ids(method, int(height), int(width), int(skip), float(ratio), device)


def _flat_index(method: str, height: int, width: int, skip: int, ratio: float, table_buckets: int,
                device: torch.device) -> Tuple[Tensor, Tensor]:
    """``(ids, flat)`` of `_flat_index_cached`, cached unless tensors are being traced."""
    if _ordinary_tensors():
        return _flat_index_cached(method, height, width, skip, ratio, table_buckets, device)
    return _flat_index_cached.__wrapped__(method, height, width, skip, ratio, table_buckets, device)


@functools.lru_cache(maxsize=32)
def _flat_index_cached(method: str, height: int, width: int, skip: int, ratio: float, table_buckets: int,
                       device: torch.device) -> Tuple[Tensor, Tensor]:
    ids, _ = _bucket_ids(method, height, width, skip, ratio, device)
    n = ids.shape[0]
    with torch.inference_mode(False), torch.no_grad():
        # flat[i*n + j] = i*nb + ids[i, j]: position of (i, bucket[i, j]) in a row-major [n, nb] table, where nb
        # is the table's size (a table with a prefix bucket also serves prefix-free grids: its last row unused)
        flat = (ids + torch.arange(n, device=device)[:, None] * table_buckets).reshape(-1)
    return ids, flat


def _offset_buckets(method: str, height: int, width: int, ratio: float, device: torch.device) -> Tensor:
    """`_offset_buckets_cached`, cached unless tensors are being traced."""
    if _ordinary_tensors():
        return _offset_buckets_cached(method, height, width, ratio, device)
    return _offset_buckets_cached.__wrapped__(method, height, width, ratio, device)


@functools.lru_cache(maxsize=32)
def _offset_buckets_cached(method: str, height: int, width: int, ratio: float, device: torch.device) -> Tensor:
    """``[(2h-1) * (2w-1)]`` long: the bucket of the offset ``(dr, dc)`` (query - key) at ``(dr + h - 1) * (2w - 1)
    + dc + w - 1``. Every pair of grid tokens has one of these offsets, so this small table replaces ``[n, n]`` ids."""
    with torch.inference_mode(False), torch.no_grad():
        dr = torch.arange(-(height - 1), height, device=device)[:, None].expand(-1, 2 * width - 1)  # [2h-1, 2w-1]
        dc = torch.arange(-(width - 1), width, device=device)[None, :].expand(2 * height - 1, -1)   # [2h-1, 2w-1]
        return _bucket_of_offsets(method, dr, dc, ratio).reshape(-1).contiguous()


def _bucket_block(method: str, height: int, width: int, skip: int, ratio: float, q_index: Tensor,
                  k_index: Tensor) -> Tensor:
    """Bucket ids ``[len(q_index), len(k_index)]`` of the pairs (query ``q_index[i]``, key ``k_index[j]``) of a
    row-major ``height x width`` grid after ``skip`` prefix tokens: the block of `irpe_bucket_ids` at those rows and
    columns, built from the ``[2h-1, 2w-1]`` offset table without the ``[n, n]`` ids (query chunks of long inputs)."""
    table = _offset_buckets(method, height, width, ratio, q_index.device)
    qg, kg = (q_index - skip).clamp_min(0), (k_index - skip).clamp_min(0)       # grid index (prefix: any)
    span = 2 * width - 1
    # offset index (qr - kr + h - 1) * span + (qc - kc + w - 1) = a[i] - b[j]: one pass over the block
    a = torch.div(qg, width, rounding_mode="floor") * span + qg % width + (height - 1) * span + (width - 1)
    b = torch.div(kg, width, rounding_mode="floor") * span + kg % width
    ids = table[a[:, None] - b[None, :]]                                         # [c, m]
    if skip > 0:
        prefix = irpe_num_buckets(method, ratio, 0)                              # the prefix bucket, last one
        for dim, index in ((1, k_index), (0, q_index)):
            first = index < skip
            count = int(first.sum())
            if count == 0:
                continue
            if bool(first[:count].all()):                                        # sorted indices: a slice
                ids.narrow(dim, 0, count).fill_(prefix)
            else:
                ids.index_fill_(dim, first.nonzero().flatten(), prefix)
    return ids


# ---- tables -----------------------------------------------------------------------------------------------------

class IRPETable(nn.Module):
    """One iRPE lookup table (the official ``iRPE`` module) for one bucket method.

    Args:
        head_dim: ``D``.
        num_heads: table heads, 1 when shared across heads (broadcast).
        num_buckets: ``nb``, including the prefix bucket.
        mode: "contextual" or "bias" (bias only for queries/keys).
        transposed: True for queries/keys (a logit term), False for values (an output term).
    """

    def __init__(self, head_dim: int, num_heads: int, num_buckets: int, mode: str = "contextual",
                 transposed: bool = True):
        super().__init__()
        self.head_dim, self.num_heads, self.num_buckets = head_dim, num_heads, num_buckets
        self.mode, self.transposed = mode, transposed
        if mode == "bias":
            if not transposed:
                raise ValueError("iRPE bias mode exists for queries and keys only, not for values")
            self.lookup_table_bias = nn.Parameter(torch.zeros(num_heads, num_buckets))
        elif mode == "contextual":
            shape = (num_heads, head_dim, num_buckets) if transposed else (num_heads, num_buckets, head_dim)
            self.lookup_table_weight = nn.Parameter(torch.zeros(shape))
        else:
            raise ValueError(f"iRPE mode must be 'contextual' or 'bias', got {mode!r}")

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
                f"mode={self.mode}, transposed={self.transposed}")

    def logits(self, x: Tensor, ids: Tensor, flat: Optional[Tensor] = None, scale: float = 1.0) -> Tensor:
        """Logit term ``[b|1, h|1, n, m]`` for ``x * scale`` (``x [b, h, n, d]``) and bucket ``ids [n, m]``: row
        ``i`` pairs token ``i`` of ``x`` with ``m`` others (all ``n`` tokens, or a block of them)."""
        n, m = ids.shape
        if self.mode == "bias":
            return self.lookup_table_bias[:, ids.reshape(-1)].view(1, self.num_heads, n, m)
        b, h = x.shape[0], x.shape[1]
        # (x * scale) @ W computed as x @ (W * scale): the scale touches the small table, not the [b, h, n, d] input
        w = self.lookup_table_weight if scale == 1.0 else self.lookup_table_weight * scale
        lut = torch.matmul(x, w)                                                  # [b, h, n, nb]
        # gather along the bucket axis: out[b, h, i, j] = lut[b, h, i, ids[i, j]]; its backward is a scatter-add
        # within each query row, which keeps memory access local
        return torch.gather(lut, 3, ids.expand(b, h, n, m))                       # [b, h, n, m]

    def values(self, attn: Tensor, flat: Tensor) -> Tensor:
        """Output term ``[b, h, n, d]`` from attention weights ``attn [b, h, n, n]``.

        Sums the weights per bucket first (``[b, h, n, nb]``), then one matmul with the table: an ``[n, n, d]``
        gather of table rows is never built."""
        b, h, n, _ = attn.shape
        acc = attn.new_zeros(b * h, n * self.num_buckets, dtype=torch.float32)
        acc.index_add_(1, flat, attn.reshape(b * h, n * n).float())               # [b*h, n*nb]
        acc = acc.view(b, h, n, self.num_buckets).to(attn.dtype)                 # [b, h, n, nb]
        return torch.matmul(acc, self.lookup_table_weight)                        # [b, h, n, d]


class IRPECrossTable(nn.Module):
    """The cross method: separate row and column tables (``rp_rows``, ``rp_cols``) whose outputs are summed."""

    def __init__(self, head_dim: int, num_heads: int, num_buckets: int, mode: str = "contextual",
                 transposed: bool = True):
        super().__init__()
        self.rp_rows = IRPETable(head_dim, num_heads, num_buckets, mode, transposed)
        self.rp_cols = IRPETable(head_dim, num_heads, num_buckets, mode, transposed)


# ---- the positional encoding ------------------------------------------------------------------------------------

@register_pe("irpe", positions="2d", paper="Wu et al., Rethinking and Improving Relative Position Encoding for "
             "Vision Transformer, ICCV 2021, arXiv:2107.14222")
class IRPE(PositionalEncoding):
    """iRPE as a `PositionalEncoding` (bias hook for queries/keys; value hook for values).

    Args:
        head_dim: ``D``.
        num_heads: attention heads ``H``.
        method: "product" (default), "euclidean" (alias "euc"), "quant" or "cross".
        mode: "contextual" (alias "ctx") or "bias".
        ratio: bucket-count control; ``alpha, beta, gamma = ratio, 2 ratio, 8 ratio`` (1.9: 7x7 product buckets).
        shared_head: one table shared by all heads (the official DeiT models) instead of one per head.
        skip: prefix tokens the table reserves a bucket for (0: none; >0: one extra bucket). At run time the
            prefix count comes from ``Positions.num_prefix``.
        rpe_on: any of "q", "k", "v" ("k", "qk", "qkv", ...): where the encoding attaches.

    The grid comes from ``pos.grid_size`` and the prefix count from ``pos.num_prefix``; without a grid the
    official rule applies: ``h = w = floor(sqrt(n))``, ``skip = n - h*w``.
    Submodules ``rpe_q`` / ``rpe_k`` / ``rpe_v`` exist only where used, as in the official state dicts.
    """

    def __new__(cls, *args, **kwargs):
        # IRPE(..., rpe_on="...v...") builds the subclass that overrides `value` (and so needs the weights)
        if cls is IRPE:
            rpe_on = kwargs.get("rpe_on", args[7] if len(args) > 7 else "k")
            if "v" in str(rpe_on).lower():
                cls = IRPEWithValue
        return super().__new__(cls)

    def __init__(self, head_dim: int, num_heads: int, method: str = "product", mode: str = "contextual",
                 ratio: float = 1.9, shared_head: bool = True, skip: int = 1, rpe_on: str = "k"):
        super().__init__()
        method = _method_name(method)
        if method not in IRPE_METHODS:
            raise ValueError(f"unknown iRPE method {method!r}; expected one of {IRPE_METHODS} (or 'euc')")
        if str(mode).lower() not in _MODES:
            raise ValueError(f"iRPE mode must be 'contextual' ('ctx') or 'bias', got {mode!r}")
        rpe_on = str(rpe_on).lower()
        if not rpe_on or set(rpe_on) - set("qkv"):
            raise ValueError(f"rpe_on must be a combination of 'q', 'k', 'v' (e.g. 'k', 'qkv'), got {rpe_on!r}")
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self.head_dim, self.num_heads = head_dim, num_heads
        self.method, self.mode, self.ratio = method, _MODES[str(mode).lower()], float(ratio)
        self.shared_head, self.skip = shared_head, int(skip)
        self.rpe_on = "".join(c for c in "qkv" if c in rpe_on)
        if self.mode == "bias" and "v" in self.rpe_on:
            raise ValueError("iRPE bias mode exists for queries and keys only, not for values; "
                             "use mode='contextual' for 'v'")
        self.num_buckets = irpe_num_buckets(method, self.ratio, self.skip)
        table_cls = IRPECrossTable if method == "cross" else IRPETable
        heads = 1 if shared_head else num_heads
        for where in "qkv":
            table = table_cls(head_dim, heads, self.num_buckets, self.mode, transposed=where != "v") \
                if where in self.rpe_on else None
            setattr(self, f"rpe_{where}", table)

    def extra_repr(self) -> str:
        return (f"method={self.method}, mode={self.mode}, ratio={self.ratio}, shared_head={self.shared_head}, "
                f"skip={self.skip}, rpe_on={self.rpe_on!r}, num_buckets={self.num_buckets}")

    # ---- geometry ---------------------------------------------------------------------------------------------
    def grid(self, n: int, pos: Optional[Positions]) -> Tuple[int, int, int]:
        """``(h, w, skip)`` for a sequence of ``n`` tokens, checked against the table."""
        if pos is not None and pos.grid_size is not None:
            h, w = pos.grid_size
            skip = int(pos.num_prefix)
            if _ordinary_tensors():           # traced (torch.export): the grid may be symbolic; keep it so
                h, w = int(h), int(w)
            if skip > n:
                raise ValueError(f"iRPE: Positions.num_prefix={skip} prefix tokens exceed the sequence length {n}")
            if h * w + skip != n:
                raise ValueError(f"iRPE: grid {h}x{w} + {skip} prefix token(s) = {h * w + skip} tokens, but the "
                                 f"attention sequence has {n} tokens")
        else:
            h = w = math.isqrt(n)
            skip = n - h * w
            if h == 0:
                raise ValueError("iRPE needs at least one grid token, got an empty sequence")
        if skip > 0 and self.skip == 0:
            raise ValueError(f"iRPE: the sequence has {skip} prefix token(s) but this encoding was built with "
                             f"skip=0 (no bucket for prefix tokens); build it with skip=1")
        return h, w, skip

    def _index(self, method: str, n: int, pos: Optional[Positions], device) -> Tuple[Tensor, Tensor]:
        h, w, skip = self.grid(n, pos)
        return _flat_index(method, h, w, skip, self.ratio, self.num_buckets, torch.device(device))

    def _logits(self, table: nn.Module, x: Tensor, pos: Optional[Positions], scale: float = 1.0) -> Tensor:
        n = x.shape[-2]
        if isinstance(table, IRPECrossTable):
            ids_r, flat_r = self._index("cross_rows", n, pos, x.device)
            ids_c, flat_c = self._index("cross_cols", n, pos, x.device)
            return table.rp_rows.logits(x, ids_r, flat_r, scale) + table.rp_cols.logits(x, ids_c, flat_c, scale)
        ids, flat = self._index(self.method, n, pos, x.device)
        return table.logits(x, ids, flat, scale)

    # ---- hooks --------------------------------------------------------------------------------------------------
    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Optional[Tensor]:
        """``[b|1, h|1, n, n]``: rpe_k on the scaled queries plus rpe_q on the scaled keys, transposed."""
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(f"iRPE encodes self-attention over one grid; got {q.shape[-2]} queries and "
                             f"{k.shape[-2]} keys")
        out = None
        if self.rpe_k is not None:
            out = self._logits(self.rpe_k, q, pos, scale)
        if self.rpe_q is not None:
            t = self._logits(self.rpe_q, k, pos, scale).transpose(-2, -1)
            out = t if out is None else out + t
        return out


    # ---- query chunks of long inputs (zoo.nn.chunked) -----------------------------------------------------------
    @property
    def bias_floats_per_pair(self) -> int:
        """float32 values per (query, key) pair that `bias_rows` holds: each term's ``[b, h, c, nk]`` rows (``[1,
        h|1, c, nk]`` in bias mode), their sum, and the long bucket ids of the block with their temporaries."""
        heads = self.num_heads if self.mode == "contextual" or not self.shared_head else 1
        terms = sum(where in self.rpe_on for where in "qk") * (2 if self.method == "cross" else 1)
        return terms * heads + (heads if terms > 1 else 0) + 8

    def _logit_block(self, table: nn.Module, x: Tensor, h: int, w: int, skip: int, q_index: Tensor,
                     k_index: Tensor, scale: float) -> Tensor:
        """Logit term ``[b|1, h|1, len(q_index), len(k_index)]`` of ``table`` for ``x`` = the tokens at
        ``q_index`` (``[b, h, len(q_index), d]``)."""
        if isinstance(table, IRPECrossTable):
            ids_r = _bucket_block("cross_rows", h, w, skip, self.ratio, q_index, k_index)
            ids_c = _bucket_block("cross_cols", h, w, skip, self.ratio, q_index, k_index)
            return table.rp_rows.logits(x, ids_r, None, scale) + table.rp_cols.logits(x, ids_c, None, scale)
        if self._rows_by_axes(table, x, k_index, h, w, skip):
            return self._product_rows(table, x, h, w, skip, q_index, scale)
        ids = _bucket_block(self.method, h, w, skip, self.ratio, q_index, k_index)  # [len(q), len(k)]
        return table.logits(x, ids, None, scale)

    def _rows_by_axes(self, table: nn.Module, x: Tensor, k_index: Tensor, h: int, w: int, skip: int) -> bool:
        """Whether `_product_rows` applies: contextual product buckets of a block of queries against every key
        (``k_index`` = all ``skip + h * w`` tokens in order), nothing needing a gradient (it writes into its
        output)."""
        if self.method != "product" or getattr(table, "mode", None) != "contextual":
            return False
        if torch.is_grad_enabled() and (x.requires_grad or table.lookup_table_weight.requires_grad):
            return False
        n = skip + h * w
        return k_index.numel() == n and bool((k_index == torch.arange(n, device=k_index.device)).all())

    def _product_rows(self, table: "IRPETable", x: Tensor, h: int, w: int, skip: int, q_index: Tensor,
                      scale: float) -> Tensor:
        """Contextual product logits ``[b, H, c, n]`` of the queries at ``q_index`` (``x [b, H, c, d]``) against
        all ``n = skip + h * w`` keys, gathered axis by axis: the product bucket is ``R(dr) * K + C(dc)``, so with
        ``L_i = lut_i`` seen as ``[K, K]`` (``K = 2 int(beta) + 1``)::

            T[i, r, :]        = L_i[R(r_i - r), :]                 [b, H, c, h, K]   (small)
            out[i, (r, col)]  = T[i, r, C(c_i - col)]              one gather into the output, index [c, 1, w]

        which never builds the ``[c, n]`` bucket ids of the block (`_bucket_block`)."""
        alpha, beta, gamma = 1.0 * self.ratio, 2.0 * self.ratio, 8.0 * self.ratio
        big = int(beta)
        k = 2 * big + 1
        g = functools.partial(piecewise_index, alpha=alpha, beta=beta, gamma=gamma)
        wts = table.lookup_table_weight if scale == 1.0 else table.lookup_table_weight * scale
        lut = torch.matmul(x, wts)                                               # [b, H, c, nb]
        b, heads, c, nb = lut.shape
        qg = (q_index - skip).clamp_min(0)
        rows = g(torch.div(qg, w, rounding_mode="floor")[:, None] - torch.arange(h, device=x.device)) + big  # [c, h]
        cols = g((qg % w)[:, None] - torch.arange(w, device=x.device)) + big                              # [c, w]
        grid = lut[..., : k * k].unflatten(-1, (k, k))                            # [b, H, c, K, K]
        per_row = torch.gather(grid, 3, rows[None, None, :, :, None].expand(b, heads, c, h, k))   # [b, H, c, h, K]
        out = lut.new_empty(b, heads, c, skip + h * w)
        torch.gather(per_row, 4, cols[None, None, :, None, :].expand(b, heads, c, h, w),
                     out=out[..., skip:].unflatten(-1, (h, w)))
        if skip > 0:
            prefix = irpe_num_buckets(self.method, self.ratio, 0)                # the prefix bucket, last one
            out[..., :skip] = lut[..., prefix:prefix + 1]
            first = q_index < skip
            if bool(first.any()):
                out[..., first, :] = lut[..., first, prefix:prefix + 1]
        return out

    def bias_rows(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float, start: int) -> Optional[Tensor]:
        """Rows ``start .. start + c - 1`` of `bias`: ``[b|1, h|1, c, n]`` for the ``c`` queries ``q [b, h, c, d]``
        at those token indices and all ``n`` keys ``k [b, h, n, d]``, built from the ``[2h-1, 2w-1]`` offset
        buckets (never the ``[n, n]`` ids, never more than ``[b, h, c, n]``).

            rpe_k: rows[b, h, i, j] = (q_i * scale) . W_k[:, bucket(i, j)]      lut (q_c @ W_k)  [b, h, c, nb]
            rpe_q: rows[b, h, i, j] = (k_j * scale) . W_q[:, bucket(j, i)]      lut (k @ W_q)    [b, h, n, nb],
                   gathered at the ``[n, c]`` block of ids, then transposed (a strided view)."""
        n, c = k.shape[-2], q.shape[-2]
        if isinstance(start, bool) or not isinstance(start, int) or start < 0 or start + c > n:
            raise ValueError(f"IRPE: a block of {c} queries starting at key {start!r} does not fit in {n} keys")
        h, w, skip = self.grid(n, pos)
        rows = torch.arange(start, start + c, device=q.device)                  # [c] token index of each query
        keys = torch.arange(n, device=q.device)                                 # [n]
        out = None
        if self.rpe_k is not None:
            out = self._logit_block(self.rpe_k, q, h, w, skip, rows, keys, scale)        # [b, h, c, n]
        if self.rpe_q is not None:
            t = self._logit_block(self.rpe_q, k, h, w, skip, keys, rows, scale).transpose(-2, -1)   # [b, h, c, n]
            out = t if out is None else out + t
        return out

    # ---- FlexAttention (zoo.nn.flex) ------------------------------------------------------------------------------
    def flex_attention(self, q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions],
                       scale: float) -> Optional[Tensor]:
        """The whole attention ``softmax(q k^T * scale + bias(q, k, pos, scale)) @ v`` ``[b, h, n, d]`` through
        FlexAttention (`zoo.nn.flex.irpe_flex_attention`: buckets computed in the kernel, no ``[n, n]`` tensor), or
        None where that does not apply and the caller keeps its SDPA paths.

        Applies to contextual product iRPE on queries and/or keys of an unmasked, non-causal self-attention
        (``q, k, v [b, h, n, d]``; ``pos`` without padding mask, documents or causality) on a device where
        `zoo.nn.flex.flex_available` says yes: CUDA, and the CPU for inference only (nothing needs a gradient).
        None for: iRPE on values, bias mode, the euclidean / quant / cross methods, a gradient on the CPU, and
        inside torch.compile / export tracing. Grid errors raise as in `bias`."""
        from ..nn.flex import flex_available, irpe_flex_attention

        if self.mode != "contextual" or self.method != "product" or "v" in self.rpe_on:
            return None
        if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or torch.compiler.is_compiling():
            return None
        if pos is not None and (pos.mask is not None or pos.doc_ids is not None or pos.causal):
            return None
        tables = [t for t in (self.rpe_k, self.rpe_q) if t is not None]
        grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                            or any(t.lookup_table_weight.requires_grad for t in tables))
        if not flex_available(q.device, grad)[0]:
            return None
        h, w, skip = self.grid(q.shape[-2], pos)

        def lut(table: Optional[IRPETable], x: Tensor) -> Optional[Tensor]:
            if table is None:
                return None
            return torch.matmul(x, table.lookup_table_weight * scale)               # [b, h, n, nb]
        return irpe_flex_attention(q, k, v, lut(self.rpe_k, q), (h, w), skip, self.ratio, scale,
                                   lut_q=lut(self.rpe_q, k))

class IRPEWithValue(IRPE):
    """`IRPE` with an encoding on values: overrides ``value``, so attention takes its weights-reading path."""

    def value(self, attn: Tensor, pos: Optional[Positions]) -> Optional[Tensor]:
        n = attn.shape[-1]
        table = self.rpe_v
        if isinstance(table, IRPECrossTable):
            _, flat_r = self._index("cross_rows", n, pos, attn.device)
            _, flat_c = self._index("cross_cols", n, pos, attn.device)
            return table.rp_rows.values(attn, flat_r) + table.rp_cols.values(attn, flat_c)
        _, flat = self._index(self.method, n, pos, attn.device)
        return table.values(attn, flat)
