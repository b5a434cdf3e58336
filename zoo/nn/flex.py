"""FlexAttention for relative-position logit biases: the bias is computed inside the attention kernel, per (query,
key) pair, from a small table and the two token indices, so no ``[b, h, n, n]`` bias ever exists in memory.

`torch.nn.attention.flex_attention.flex_attention` compiled with ``torch.compile`` (inductor: C++ on the CPU, Triton
on CUDA) applies a ``score_mod(score, b, h, q_idx, kv_idx)`` to each scaled logit ``score = q_i . k_j * scale``::

    toeplitz_flex_attention   score += table[h, j - i + n - 1]                      table [h|1, 2n-1]  (ALiBi-like,
                                                                                     T5/KERPLE rows, any 1D Toeplitz)
                              causal: a block mask (keys j > i skipped block-wise, masked inside diagonal blocks)
    irpe_flex_attention       score += lut[b, h, i, bucket(i, j)]               lut = (q * scale) @ W_k  [b, h, n, nb]
                                     (+ lut_q[b, h, j, bucket(j, i)])           lut_q = (k * scale) @ W_q
                              bucket(i, j): iRPE product method, computed in the kernel from the 2D patch
                              coordinates of tokens i and j (row-major grid after ``num_prefix`` prefix tokens):
                                  (g(dr) + B) * (2B + 1) + (g(dc) + B),  g = the piecewise index (paper Eq. 18)
                              and the prefix bucket (2B + 1)^2 for pairs with a prefix token (cls, registers).

Availability (`flex_available`): CUDA forward and backward (gradients of q, k, v and of the captured tables);
CPU forward only (torch has no CPU FlexAttention backward, so inputs that need a gradient are refused).  Compiled
kernels are cached per (shape, dtype, device, configuration): the first call of a new shape compiles (tens of
seconds on a CPU), later calls reuse the kernel.  This module imports torch only; it needs torch >= 2.5.
"""
from __future__ import annotations

import functools
import math
import shutil
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["flex_available", "toeplitz_flex_attention", "irpe_flex_attention", "irpe_product_bucket"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _flex_module():
    """``torch.nn.attention.flex_attention`` or None (torch < 2.5)."""
    try:
        from torch.nn.attention import flex_attention as fa
    except ImportError:
        return None
    return fa


def flex_available(device, requires_grad: bool = False) -> Tuple[bool, str]:
    """Whether FlexAttention can run on ``device`` (a forward and, with ``requires_grad``, a backward), and why not.

    Returns ``(True, "")`` or ``(False, reason)``. CUDA: forward and backward (needs Triton). CPU: forward only,
    with a C++ compiler for inductor; ``requires_grad=True`` is refused (no CPU FlexAttention backward in torch).
    Other devices: not supported here."""
    device = torch.device(device)
    if _flex_module() is None:
        return False, f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs torch >= 2.5)"
    if not torch._dynamo.is_dynamo_supported():
        return False, "torch.compile (dynamo) is not supported on this Python / platform"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        from torch.utils._triton import has_triton
        if not has_triton():
            return False, "FlexAttention on CUDA needs Triton, which is not installed"
        return True, ""
    if device.type == "cpu":
        if requires_grad:
            return False, (f"FlexAttention has no CPU backward in torch {torch.__version__}: CPU use is forward only "
                           f"(inputs without requires_grad, or under torch.no_grad())")
        if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
            return False, ("FlexAttention on the CPU compiles C++ kernels, and no C++ compiler (c++, g++, clang++) "
                           "was found")
        return True, ""
    return False, f"FlexAttention is supported here on 'cpu' (forward) and 'cuda', not on {device.type!r}"


def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, by: str) -> Tuple[int, int, int, int]:
    """``(b, h, n, d)`` of self-attention inputs ``q, k, v [b, h, n, d]``, or a ValueError naming the argument."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.ndim != 4:
            raise ValueError(f"{by}: {name} must be a [b, h, n, d] tensor, got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"{by}: {name} has dtype {t.dtype}; FlexAttention takes float32, bfloat16 or float16")
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{by}: q, k, v must be [b, h, n, d] of one self-attention (queries = keys); got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.device != q.device or v.device != q.device or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{by}: q, k, v must share one device and dtype")
    b, h, n, d = q.shape
    return b, h, n, d


def _require(device: torch.device, grad: bool, by: str) -> None:
    ok, why = flex_available(device, grad)
    if not ok:
        raise ConfigError(f"{by}: {why}")


def _scale(scale: Optional[float], d: int) -> float:
    return float(d ** -0.5 if scale is None else scale)


@functools.lru_cache(maxsize=16)
def _causal_block_mask(n: int, device: torch.device):
    """The causal `BlockMask` of ``n`` queries and keys (key j visible to query i when j <= i)."""
    fa = _flex_module()

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx
    return fa.create_block_mask(causal, None, None, n, n, device=device)


def _compiled(build: Callable[[], Callable]) -> Callable:
    # compiled once per cache key (dynamic=False: a new shape is a new key, never a recompile of a cached one)
    return torch.compile(build(), dynamic=False, fullgraph=True)


# ---- Toeplitz 1D bias -------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _toeplitz_kernel(shape: Tuple[int, int, int, int], table_heads: int, causal: bool, scale: float,
                     dtype: torch.dtype, device: torch.device) -> Callable:
    fa = _flex_module()
    n = shape[2]

    def build():
        def run(q, k, v, table, block_mask):
            def score_mod(score, b, h, q_idx, kv_idx):
                return score + table[h if table_heads > 1 else 0, kv_idx - q_idx + (n - 1)]
            return fa.flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
        return run
    return _compiled(build)


def toeplitz_flex_attention(q: Tensor, k: Tensor, v: Tensor, table: Tensor, scale: Optional[float] = None,
                            causal: bool = False) -> Tensor:
    """``softmax(q k^T * scale + T) @ v`` with the Toeplitz bias ``T[h, i, j] = table[h, j - i + n - 1]``.

    Args:
        q, k, v: ``[b, h, n, d]`` (self-attention: query ``i`` and key ``i`` are the same token).
        table: ``[h|1, 2n-1]``, the bias of each offset ``j - i`` (key minus query) from ``-(n-1)`` to ``n-1``;
            one row is shared by every head.
        scale: logit scale; None = ``d ** -0.5``.
        causal: key ``j`` visible to query ``i`` only when ``j <= i`` (a block mask: fully masked blocks are
            skipped).

    Returns ``[b, h, n, d]`` in the dtype of ``v``. CUDA: forward and backward (gradients of q, k, v and table);
    CPU: forward only (see `flex_available`); ConfigError when unavailable, ValueError for bad shapes."""
    by = "toeplitz_flex_attention"
    b, h, n, d = _check_qkv(q, k, v, by)
    if not isinstance(table, Tensor) or table.ndim != 2 or table.shape[0] not in (1, h) \
            or table.shape[1] != 2 * n - 1:
        raise ValueError(f"{by}: table must be [h|1, 2n-1] = [{h}|1, {2 * n - 1}] for n={n} tokens, got "
                         f"{tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__}")
    if table.device != q.device:
        raise ValueError(f"{by}: table is on {table.device} but q is on {q.device}")
    _require(q.device, _needs_grad(q, k, v, table), by)
    kernel = _toeplitz_kernel((b, h, n, d), int(table.shape[0]), bool(causal), _scale(scale, d), q.dtype, q.device)
    mask = _causal_block_mask(n, q.device) if causal else None
    return kernel(q, k, v, table.float(), mask)


# ---- contextual iRPE (product method) ------------------------------------------------------------------------

def _piecewise(x: Tensor, ratio: float) -> Tensor:
    """The iRPE piecewise index ``g`` (paper Eq. 18) of integer offsets ``x``, in float32 arithmetic as
    `zoo.pe.irpe.piecewise_index`: ``round`` half-to-even, clipped at ``int(2 * ratio)``; returns int64."""
    alpha, beta, gamma = 1.0 * ratio, 2.0 * ratio, 8.0 * ratio
    xf = x.to(torch.float32)
    ax = xf.abs()
    far = alpha + torch.log(torch.clamp(ax, min=alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    far = torch.clamp(torch.round(far), max=float(int(beta)))                 # = int(min(beta, round)): round is whole
    return torch.where(ax <= alpha, xf, torch.sign(xf) * far).to(torch.int64)


def irpe_product_bucket(q_idx: Tensor, kv_idx: Tensor, width: int, num_prefix: int, ratio: float) -> Tensor:
    """Product-method iRPE bucket of token pairs (query ``q_idx``, key ``kv_idx``), elementwise (broadcasting),
    from their patch coordinates on a row-major grid of ``width`` columns after ``num_prefix`` prefix tokens.

    ``(g(dr) + B) * (2B + 1) + (g(dc) + B)`` with ``(dr, dc)`` = query minus key (row, column), ``B = int(2 ratio)``;
    pairs with a prefix token get the prefix bucket ``(2B + 1)^2``. Equals `zoo.pe.irpe.irpe_bucket_ids` ("product")
    at those pairs. Written with scalar-friendly ops: it runs inside a FlexAttention ``score_mod``."""
    b = int(2.0 * ratio)
    gi = torch.clamp(q_idx - num_prefix, min=0)                                 # grid index (prefix: any)
    gj = torch.clamp(kv_idx - num_prefix, min=0)
    dr = torch.div(gi, width, rounding_mode="floor") - torch.div(gj, width, rounding_mode="floor")
    dc = gi % width - gj % width
    bucket = (_piecewise(dr, ratio) + b) * (2 * b + 1) + (_piecewise(dc, ratio) + b)
    if num_prefix > 0:
        prefix = (q_idx < num_prefix) | (kv_idx < num_prefix)
        bucket = torch.where(prefix, torch.full_like(bucket, (2 * b + 1) ** 2), bucket)
    return bucket


@functools.lru_cache(maxsize=32)
def _irpe_kernel(shape: Tuple[int, int, int, int], lut_bh: Optional[Tuple[int, int]],
                 lut_q_bh: Optional[Tuple[int, int]], width: int, num_prefix: int, ratio: float, scale: float,
                 dtype: torch.dtype, device: torch.device) -> Callable:
    fa = _flex_module()

    def pick(bh, b, h):
        return (b if bh[0] > 1 else 0), (h if bh[1] > 1 else 0)

    def build():
        def run(q, k, v, lut, lut_q):
            def score_mod(score, b, h, q_idx, kv_idx):
                if lut_bh is not None:                          # rpe on keys: the query's row, bucket (i, j)
                    bb, hh = pick(lut_bh, b, h)
                    score = score + lut[bb, hh, q_idx, irpe_product_bucket(q_idx, kv_idx, width, num_prefix, ratio)]
                if lut_q_bh is not None:                        # rpe on queries: the key's row, bucket (j, i)
                    bb, hh = pick(lut_q_bh, b, h)
                    score = score + lut_q[bb, hh, kv_idx,
                                          irpe_product_bucket(kv_idx, q_idx, width, num_prefix, ratio)]
                return score
            return fa.flex_attention(q, k, v, score_mod=score_mod, scale=scale)
        return run
    return _compiled(build)


def irpe_flex_attention(q: Tensor, k: Tensor, v: Tensor, lut: Optional[Tensor], grid_hw: Sequence[int],
                        num_prefix: int = 0, ratio: float = 1.9, scale: Optional[float] = None,
                        lut_q: Optional[Tensor] = None) -> Tensor:
    """``softmax(q k^T * scale + R) @ v`` with contextual iRPE (product method) computed inside the kernel::

        R[b, h, i, j] = lut[b, h, i, bucket(i, j)] + lut_q[b, h, j, bucket(j, i)]

    Args:
        q, k, v: ``[b, h, n, d]``, ``n = num_prefix + grid_hw[0] * grid_hw[1]`` (prefix tokens first, then the
            patches row-major).
        lut: ``[b|1, h|1, n, nb]`` = ``(q * scale) @ W_k`` (iRPE on keys), or None. ``nb`` = ``(2B+1)^2`` or
            ``(2B+1)^2 + 1`` (a table with the prefix bucket; required when ``num_prefix > 0``), ``B = int(2 ratio)``.
        grid_hw: ``(height, width)`` of the patch grid.
        num_prefix: prefix tokens (cls, registers), all in the prefix bucket.
        ratio: iRPE ratio (``alpha, beta, gamma = ratio, 2 ratio, 8 ratio``); 1.9 for the official models.
        scale: logit scale of ``q k^T``; None = ``d ** -0.5``.
        lut_q: ``[b|1, h|1, n, nb]`` = ``(k * scale) @ W_q`` (iRPE on queries), or None.

    Returns ``[b, h, n, d]``. CUDA: forward and backward (gradients reach q, k, v and the lookup tables); CPU:
    forward only (see `flex_available`). ConfigError when unavailable, ValueError naming a bad argument."""
    by = "irpe_flex_attention"
    b, h, n, d = _check_qkv(q, k, v, by)
    try:
        gh, gw = (int(x) for x in grid_hw)
    except (TypeError, ValueError):
        raise ValueError(f"{by}: grid_hw must be (height, width), got {grid_hw!r}") from None
    if gh <= 0 or gw <= 0 or isinstance(num_prefix, bool) or int(num_prefix) != num_prefix or num_prefix < 0:
        raise ValueError(f"{by}: grid_hw must be positive and num_prefix >= 0, got grid_hw={grid_hw!r}, "
                         f"num_prefix={num_prefix!r}")
    num_prefix = int(num_prefix)
    if num_prefix + gh * gw != n:
        raise ValueError(f"{by}: grid_hw {gh}x{gw} + num_prefix {num_prefix} = {num_prefix + gh * gw} tokens, but "
                         f"q has n={n}")
    if not ratio > 0:
        raise ValueError(f"{by}: ratio must be positive, got {ratio!r}")
    if lut is None and lut_q is None:
        raise ValueError(f"{by}: give lut (iRPE on keys) and/or lut_q (iRPE on queries)")
    grid_buckets = (2 * int(2.0 * ratio) + 1) ** 2
    allowed = (grid_buckets + 1,) if num_prefix > 0 else (grid_buckets, grid_buckets + 1)
    for name, t in (("lut", lut), ("lut_q", lut_q)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.ndim != 4 or t.shape[0] not in (1, b) or t.shape[1] not in (1, h) \
                or t.shape[2] != n or t.shape[3] not in allowed:
            raise ValueError(f"{by}: {name} must be [b|1, h|1, n, nb] = [{b}|1, {h}|1, {n}, "
                             f"{' or '.join(map(str, allowed))}] (product buckets at ratio {ratio}"
                             f"{', with the prefix bucket' if num_prefix else ''}), got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if t.device != q.device:
            raise ValueError(f"{by}: {name} is on {t.device} but q is on {q.device}")
    _require(q.device, _needs_grad(q, k, v, lut, lut_q), by)
    kernel = _irpe_kernel((b, h, n, d), None if lut is None else tuple(lut.shape[:2]),
                          None if lut_q is None else tuple(lut_q.shape[:2]), gw, num_prefix, float(ratio),
                          _scale(scale, d), q.dtype, q.device)
    return kernel(q, k, v, None if lut is None else lut.float(), None if lut_q is None else lut_q.float())
