"""One softmax attention for every model.

    x [b, n, c] --qkv--> q, k, v [b, h, n, d] --pe.rotate--> q, k
        fast path : SDPA(q, k, v, attn_mask = pe.bias + padding/causal mask)   (or is_causal=True)
        slow path : softmax(q k^T * scale + bias) @ v  + pe.value(weights)    (only when the PE reads weights)

The bias of a layer is built once per forward (the PE returns all heads at once) and handed to SDPA as a float
``attn_mask``. Key names (``qkv``, ``proj``) follow timm's ViT so that ViT checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..positions import Positions

__all__ = ["Attention", "build_attn_mask", "split_heads", "merge_heads"]


def split_heads(qkv: Tensor, num_heads: int) -> Tuple[Tensor, Tensor, Tensor]:
    """A fused projection ``[b, n, 3 * h * d]`` (timm's layout: q | k | v, heads inside each) -> q, k, v
    ``[b, h, n, d]``."""
    b, n, c3 = qkv.shape
    qkv = qkv.reshape(b, n, 3, num_heads, c3 // (3 * num_heads)).permute(2, 0, 3, 1, 4)  # [3, b, h, n, d]
    return qkv.unbind(0)


def merge_heads(x: Tensor) -> Tensor:
    """``[b, h, n, d] -> [b, n, h * d]``, the inverse of one `split_heads` output."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def build_attn_mask(bias: Optional[Tensor], pos: Optional[Positions], nq: int, nk: int, causal: bool,
                    dtype: torch.dtype, device) -> Optional[Tensor]:
    """Sum a logit bias with the padding and causal masks into one additive float mask ``[b|1, h|1, nq, nk]``.

    Returns None when there is nothing to add."""
    mask = None if bias is None else bias.to(dtype)
    neg = torch.finfo(dtype).min
    masked = False
    if pos is not None and pos.mask is not None:
        pad = ~pos.mask.to(device=device, dtype=torch.bool)[:, None, None, :]          # [b, 1, 1, nk]
        pad = torch.zeros(pad.shape, dtype=dtype, device=device).masked_fill(pad, neg)
        mask = pad if mask is None else mask + pad
        masked = True
    if causal:
        # queries are the last nq of nk positions (KV caches put earlier keys first)
        keep = torch.ones(nq, nk, dtype=torch.bool, device=device).tril(diagonal=nk - nq)
        c = torch.zeros(nq, nk, dtype=dtype, device=device).masked_fill(~keep, neg)
        mask = c if mask is None else mask + c
        masked = True
    if masked and bias is not None or (pos is not None and pos.mask is not None and causal):
        mask = mask.clamp_min(neg)  # two -inf-like terms must not overflow
    return mask


class Attention(nn.Module):
    """Multi-head softmax attention with a pluggable positional encoding ``pe``.

    Args:
        dim: model width ``c``.
        num_heads: ``h``; ``d = c // h``.
        qkv_bias: bias on the fused qkv projection.
        pe: a `PositionalEncoding` (or None for no relative encoding in attention).
        causal: always apply a causal mask (decoder LMs); ``Positions.causal`` also switches it on.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, pe: Optional[nn.Module] = None, causal: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.causal = causal
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pe = pe

    def forward(self, x: Tensor, pos: Optional[Positions] = None) -> Tensor:
        q, k, v = split_heads(self.qkv(x), self.num_heads)                        # [b, h, n, d] each
        out = merge_heads(self.attend(q, k, v, pos))                              # [b, n, c]
        return self.proj_drop(self.proj(out))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions]) -> Tensor:
        """Attention on ``[b, h, n, d]`` tensors, with the PE hooks applied."""
        pe = self.pe
        causal = self.causal or (pos is not None and pos.causal)
        bias = None
        if pe is not None:
            q, k = pe.rotate(q, k, pos)
            bias = pe.bias(q, k, pos, self.scale)
        nq, nk = q.shape[-2], k.shape[-2]
        needs_weights = pe is not None and pe.needs_weights
        has_pad = pos is not None and pos.mask is not None

        if not needs_weights:
            drop = self.attn_drop.p if self.training else 0.0
            if bias is None and not has_pad:
                return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=causal and nq == nk) \
                    if (not causal or nq == nk) else F.scaled_dot_product_attention(
                        q, k, v, attn_mask=build_attn_mask(None, None, nq, nk, True, q.dtype, q.device),
                        dropout_p=drop)
            mask = build_attn_mask(bias, pos, nq, nk, causal, q.dtype, q.device)
            if q.device.type == "cpu" and bias is not None and bias.requires_grad and torch.is_grad_enabled():
                # On the CPU, SDPA with a float mask that needs a gradient runs its unfused math kernel; the same
                # math with the bias folded into the q.k GEMM (baddbmm) saves a pass over [b, h, n, n].
                return self._biased_gemm_attention(q, k, v, mask)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)

        # slow path: the encoding needs the attention weights
        attn = (q * self.scale) @ k.transpose(-2, -1)                            # [b, h, nq, nk]
        mask = build_attn_mask(bias, pos, nq, nk, causal, attn.dtype, attn.device)
        if mask is not None:
            attn = attn + mask
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = attn @ v
        extra = pe.value(attn, pos)
        if extra is not None:
            out = out + extra.to(out.dtype)
        return out

    def _biased_gemm_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """``softmax(q k^T * scale + mask) @ v`` on ``[b, h, n, d]`` with the mask added inside the GEMM."""
        b, h, nq, d = q.shape
        nk = k.shape[-2]
        mask = mask.expand(b, h, nq, nk).reshape(b * h, nq, nk)                 # [b*h, nq, nk]
        logits = torch.baddbmm(mask, q.reshape(b * h, nq, d), k.reshape(b * h, nk, d).transpose(1, 2),
                               alpha=self.scale)
        weights = self.attn_drop(logits.softmax(dim=-1))
        return torch.bmm(weights.to(v.dtype), v.reshape(b * h, nk, -1)).view(b, h, nq, -1)
