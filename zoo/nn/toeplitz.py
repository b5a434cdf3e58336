"""Attention with a Toeplitz logit bias at the cost of plain attention: the fused CPU kernel reads the bias from an
O(n) table, never from an ``[h, n, n]`` tensor.

A bias that depends on the key - query offset only (ALiBi, T5 buckets, KERPLE, bidirectional FIRE, Sandwich, at token
positions) is a per-head table ``t[h, 2n - 1]``, ``bias[h, i, j] = t[h, j - i + n - 1]``.  With the keys in reverse
order (``j' = n - 1 - j``) the bias becomes a Hankel matrix of the reversed table ``r = t.flip(-1)``::

    bias[h, i, j'] = r[h, i + j']        = r.as_strided([h, n, n], strides [2n - 1, 1, 1])    (a view, no copy)

and the fused CPU flash kernel (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward) accepts that
strided view as its ``attn_mask``: the softmax attention with the bias costs what it costs without (the kernel reads
the mask tile by tile), forward and backward, with no ``[n, n]`` tensor held for autograd (only q, k, v, the output and
the per-row log-sum-exp, as for plain SDPA).  Reversing the keys does not change the attention (a sum over keys);
the key and value gradients are reversed back.

Causal attention runs in query blocks ``[s, e)`` against the keys ``0 .. e - 1`` (the reversed keys ``n - e .. n -
1``), with ``-inf`` for the keys after the query (the table's positive offsets): about half the work of the
bidirectional form, like a causal kernel.

A learned table (T5, KERPLE, FIRE) needs the gradient of the logits, which the fused backward does not return: the
table gradient is the sum of ``dS = P * (dP - D)`` along each diagonal,
``dt[h, o] = sum_{j - i = o - n + 1} dS[h, i, j]``, computed in query blocks of ``[b, h, c, n]`` (two GEMMs per block
and a few elementwise passes: ``P = exp(s q k^T + bias - lse)``, ``dP = dO v^T``, ``D = rowsum(dO * out)``), the
diagonal sums read as column sums of ``dS`` written into a skewed buffer.  Gradients reach the encoding's
parameters through the table (autograd on an O(n) graph).

Only the CPU kernel takes a strided mask; other devices use the attention's other paths (`available`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["available", "toeplitz_attention", "hankel_mask", "BLOCK_BYTES"]

#: working set of one query block of the table-gradient pass (float32 ``[b, h, c, n]`` tensors, a few of them)
BLOCK_BYTES = 32 * 2 ** 20
#: query rows per block of the causal forward / backward (the kernel's tiles are far smaller)
CAUSAL_ROWS = 1024


def available(q: Tensor) -> Tuple[bool, str]:
    """Whether the fused Toeplitz path can run on ``q``'s device, and why not."""
    if q.device.type != "cpu":
        return False, f"the strided-mask flash kernel exists on the CPU only (got {q.device.type})"
    if not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return False, "this torch has no CPU flash attention kernel"
    return True, ""


def hankel_mask(rev: Tensor, rows: Tuple[int, int], keys: Tuple[int, int]) -> Tensor:
    """The bias of query rows ``rows = (s, e)`` against reversed keys ``keys = (ks, ke)`` as a strided view
    ``[1, h, e - s, ke - ks]`` of the reversed table ``rev [h, 2n - 1]`` (contiguous): ``mask[0, h, a, c] = rev[h,
    s + a + ks + c]``."""
    (s, e), (ks, ke) = rows, keys
    h, width = rev.shape
    return rev.as_strided((1, h, e - s, ke - ks), (0, width, 1, 1), rev.storage_offset() + s + ks)


def _blocks(n: int, causal: bool):
    """``(s, e, ks)``: query rows ``s .. e - 1`` against reversed keys ``ks .. n - 1``."""
    if not causal:
        yield 0, n, 0
        return
    for s in range(0, n, CAUSAL_ROWS):
        e = min(s + CAUSAL_ROWS, n)
        yield s, e, n - e


class _ToeplitzAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, table: Tensor, scale: float, causal: bool) -> Tensor:
        n = q.shape[-2]
        rev = table.detach().flip(-1).to(torch.float32)
        if causal:
            rev[:, : n - 1] = float("-inf")                                      # keys after the query
        rev = rev.contiguous()
        kr, vr = k.flip(-2), v.flip(-2)                                           # [b, h, n, d] reversed keys
        fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        if not causal:
            out, lse = fwd(q, kr, vr, 0.0, False, attn_mask=hankel_mask(rev, (0, n), (0, n)), scale=scale)
        else:
            out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
            for s, e, ks in _blocks(n, True):
                o, l = fwd(q[..., s:e, :], kr[..., ks:, :], vr[..., ks:, :], 0.0, False,
                           attn_mask=hankel_mask(rev, (s, e), (ks, n)), scale=scale)
                out[..., s:e, :] = o
                lse[..., s:e] = l
        ctx.save_for_backward(q, k, v, out, lse, rev)                             # k, v reversed again there
        ctx.scale, ctx.causal = scale, causal
        ctx.table_grad = ctx.needs_input_grad[3]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse, rev = ctx.saved_tensors
        kr, vr = k.flip(-2), v.flip(-2)
        scale, causal = ctx.scale, ctx.causal
        n = q.shape[-2]
        grad_out = grad_out.contiguous()
        if ctx.table_grad:
            dq, dkr, dvr, dtable = _math_backward(grad_out, q, kr, vr, out, lse, rev, scale, causal)
            return dq, dkr.flip(-2), dvr.flip(-2), dtable, None, None
        bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        if not causal:
            dq, dkr, dvr = bwd(grad_out, q, kr, vr, out, lse, 0.0, False,
                               attn_mask=hankel_mask(rev, (0, n), (0, n)), scale=scale)
        else:
            dq, dkr, dvr = torch.empty_like(q), torch.zeros_like(kr), torch.zeros_like(vr)
            for s, e, ks in _blocks(n, True):
                gq, gk, gv = bwd(grad_out[..., s:e, :], q[..., s:e, :], kr[..., ks:, :], vr[..., ks:, :],
                                 out[..., s:e, :], lse[..., s:e], 0.0, False,
                                 attn_mask=hankel_mask(rev, (s, e), (ks, n)), scale=scale)
                dq[..., s:e, :] = gq
                dkr[..., ks:, :] += gk
                dvr[..., ks:, :] += gv
        return dq, dkr.flip(-2), dvr.flip(-2), None, None, None


def _math_backward(grad_out: Tensor, q: Tensor, kr: Tensor, vr: Tensor, out: Tensor, lse: Tensor, rev: Tensor,
                   scale: float, causal: bool):
    """Gradients of q, reversed k, reversed v and the table, in float32 query blocks (see the module docstring).

    Per block of ``c`` rows against the ``m`` visible reversed keys, with buffers reused across blocks::

        S  = mask - lse  (+)=  scale * q_c k^T            one GEMM into the buffer (baddbmm)
        P  = exp(S)                                       (0 where the bias is -inf)
        dS = P * (dO_c v^T - D)                           (-D the GEMM's input), written into a skewed buffer:
                                                          row a shifted by a
        dq_c = scale * dS k,  dk += scale * dS^T q_c,  dv += P^T dO_c
        dt[s + ks + t] += sum of the skewed buffer's column t   (every (a, c') with a + c' = t)
    """
    b, h, n, d = q.shape
    f32 = torch.float32
    bh = b * h
    qf = q.to(f32).reshape(bh, n, d)
    kf, vf = kr.to(f32).reshape(bh, n, d), vr.to(f32).reshape(bh, n, -1)
    go = grad_out.to(f32).reshape(bh, n, -1)
    delta = (go * out.to(f32).reshape(bh, n, -1)).sum(-1, keepdim=True)         # D [bh, n, 1]
    lse = lse.reshape(bh, n, 1)
    dq, dk, dv = torch.empty_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
    drev = torch.zeros(h, 2 * n - 1, dtype=f32, device=q.device)
    rows = int(max(1, min(n, BLOCK_BYTES // max(1, 4 * bh * n))))
    bufs = {}
    for s in range(0, n, rows):
        e = min(s + rows, n)
        c = e - s
        ks = n - e if causal else 0                                              # reversed keys ks .. n - 1 visible
        m = n - ks
        if (c, m) not in bufs:
            bufs.clear()
            skew = torch.zeros(bh, c, m + c, dtype=f32, device=q.device)
            bufs[(c, m)] = (torch.empty(bh, c, m, dtype=f32, device=q.device),
                            torch.empty(bh, c, m, dtype=f32, device=q.device), skew,
                            skew.as_strided((bh, c, m), (c * (m + c), m + c + 1, 1)))
        p, dp, skew, ds = bufs[(c, m)]
        k_m, v_m = kf[:, ks:], vf[:, ks:]
        torch.sub(hankel_mask(rev, (s, e), (ks, n)).expand(b, h, c, m), lse[:, s:e].view(b, h, c, 1),
                  out=p.view(b, h, c, m))
        torch.baddbmm(p, qf[:, s:e], k_m.transpose(1, 2), alpha=scale, out=p)
        p.exp_()
        torch.baddbmm(delta[:, s:e].expand(bh, c, m), go[:, s:e], v_m.transpose(1, 2), beta=-1, out=dp)
        torch.mul(dp, p, out=ds)                                                 # dS, skewed rows
        torch.bmm(ds, k_m, out=dq[:, s:e]).mul_(scale)
        dk[:, ks:].baddbmm_(ds.transpose(1, 2), qf[:, s:e], alpha=scale)
        dv[:, ks:].baddbmm_(p.transpose(1, 2), go[:, s:e])
        cols = skew.view(b, h, c, m + c).sum((0, 2))                             # [h, m + c]
        drev[:, s + ks: s + ks + m + c - 1] += cols[:, : m + c - 1]
    shape = (b, h, n)
    return (dq.view(*shape, d).to(q.dtype), dk.view(*shape, d).to(kr.dtype), dv.view(*shape, -1).to(vr.dtype),
            drev.flip(-1))


def toeplitz_attention(q: Tensor, k: Tensor, v: Tensor, table: Tensor, scale: float, causal: bool = False) -> Tensor:
    """``softmax(scale * q k^T + bias [+ causal mask]) @ v`` with ``bias[h, i, j] = table[h, j - i + n - 1]``.

    Args:
        q, k, v: ``[b, h, n, d]`` (any float dtype the CPU kernel takes; the bias is added in float32), the same
            ``n`` for queries and keys (self-attention over token positions).
        table: ``[h, 2n - 1]`` float (or ``[1, 2n - 1]``, broadcast over heads); may require a gradient.
        scale: the logit scale (``head_dim ** -0.5`` for the usual attention).
        causal: keys after the query are masked (the table's positive offsets are ignored).

    Returns ``[b, h, n, d]`` in ``v``'s dtype.  See the module docstring; `available` says where it runs."""
    ok, why = available(q)
    if not ok:
        raise RuntimeError(f"toeplitz_attention: {why}")
    if q.ndim != 4 or k.shape != q.shape[:-1] + (k.shape[-1],) or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"q, k, v must be [b, h, n, d] with the same b, h, n; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, h, n, _ = q.shape
    if table.ndim != 2 or table.shape[-1] != 2 * n - 1 or table.shape[0] not in (1, h):
        raise ValueError(f"table must be [h, 2n - 1] = [{h}, {2 * n - 1}] (or [1, {2 * n - 1}]), got "
                         f"{tuple(table.shape)}")
    if table.shape[0] != h:
        table = table.expand(h, -1)
    return _ToeplitzAttention.apply(q, k, v, table, float(scale), bool(causal))
