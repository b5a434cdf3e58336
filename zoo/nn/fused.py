"""The attention's fused paths for position biases (`zoo.nn.Attention` calls `attend_fused` before building a
bias): FlexAttention (`zoo.nn.flex`, automatic on CUDA, ``Attention.flex``) and the Toeplitz kernel
(`zoo.nn.toeplitz`, CPU, ``Attention.fused_bias``).  `kernel_path` names the path a call takes, for reports."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from ..positions import Positions
from . import flex, toeplitz

if TYPE_CHECKING:
    from .attention import Attention

__all__ = ["attend_fused", "kernel_path", "consecutive"]


def attend_fused(attn: "Attention", q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions], causal: bool,
                 pre_scaled: bool) -> Optional[Tensor]:
    """The attention of rotated ``q, k, v [b, h, n, d]`` with the encoding's bias through FlexAttention (where
    wanted and possible) or the Toeplitz kernel, or None: the caller builds the bias."""
    out = _attend_flex(attn, q, k, v, pos, causal, pre_scaled) if _wants_flex(attn, q) else None
    if out is None and attn.fused_bias and attn.pe.has_bias_table:
        out = _attend_toeplitz(attn, q, k, v, pos, causal, pre_scaled)
    return out


def kernel_path(attn: "Attention", n: int, batch: int = 1, device="cpu", grad: bool = False) -> str:
    """Which path a self-attention over ``n`` tokens at token positions (no padding, no KV cache, no mask rule)
    takes here: ``"sdpa"`` (fused, no bias), ``"toeplitz"`` (`zoo.nn.toeplitz`), ``"flex"``, ``"chunks of R"``
    (query chunks of R rows, `zoo.nn.chunked`), ``"bias"`` (one whole bias + SDPA) or ``"weights"`` (the encoding
    reads the attention weights).  For reports; the forward decides the same way (`attend_fused`)."""
    pe, dev = attn.pe, torch.device(device)
    if pe is None or not pe.has_bias and not pe.needs_weights:
        return "sdpa" if attn.mask is None else "bias"
    if pe.needs_weights:
        return "weights"
    if attn.mask is None and attn.temperature is None:
        wants_flex = attn.flex is True or (attn.flex is None and dev.type == "cuda")
        if wants_flex and flex.flex_available(dev, grad)[0] and (hasattr(pe, "flex_attention") or (
                pe.has_bias_table and pe.bias_table(n, "cpu") is not None)):
            return "flex"
        if attn.fused_bias and pe.has_bias_table and dev.type == "cpu" and pe.bias_table(n, "cpu") is not None \
                and not (attn.training and attn.attn_drop.p > 0):
            return "toeplitz"
    q = torch.empty(batch, attn.num_heads, n, 0, device="meta")
    chunk = attn._query_chunk(q, q)
    return "bias" if chunk is None else f"chunks of {chunk}"


def _wants_flex(attn: "Attention", q: Tensor) -> bool:
    return attn.flex is True or (attn.flex is None and q.device.type == "cuda")


def _attend_flex(attn: "Attention", q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions], causal: bool,
                 pre_scaled: bool) -> Optional[Tensor]:
    """FlexAttention for a Toeplitz table or the encoding's own ``flex_attention`` (contextual iRPE), or None
    (automatic choice) / a ConfigError (``flex=True``) where it does not apply."""
    pe, forced = attn.pe, attn.flex is True
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                        or any(p.requires_grad for p in pe.parameters()))
    ok, why = flex.flex_available(q.device, grad)
    if ok and (attn.temperature is not None and not pre_scaled):
        ok, why = False, "a temperature scales the queries after the bias reads them"
    out = None
    try:
        if ok and hasattr(pe, "flex_attention"):
            out = pe.flex_attention(q, k, v, pos, attn.scale)
        elif ok and pe.has_bias_table:
            n = q.shape[-2]
            if k.shape[-2] == n and (pos is None or (pos.mask is None and consecutive(pos.ids, n))) and not (
                    attn.training and attn.attn_drop.p > 0):
                table = pe.shared_bias_table(n, pos, q.device)
                if table is not None:
                    out = flex.toeplitz_flex_attention(q, k, v, table, attn.scale, causal)
    except Exception as err:                                                     # a compile failure, say
        if forced:
            raise
        # the automatic choice falls back, loudly, and does not try this layer again
        warnings.warn(f"FlexAttention failed for {type(pe).__name__} on {q.device} ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); this attention layer uses SDPA with the "
                      f"bias from now on (set Attention.flex = False to skip FlexAttention)", RuntimeWarning)
        attn.flex = False
        return None
    if out is None and forced:
        why = why or ("no FlexAttention form for these inputs (a KV cache, padding, dropout, a mask, or positions "
                      "other than token indices)")
        raise ConfigError(f"Attention(flex=True): FlexAttention cannot run {type(pe).__name__} here: {why}")
    return out


def _attend_toeplitz(attn: "Attention", q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions], causal: bool,
                     pre_scaled: bool) -> Optional[Tensor]:
    """The fused Toeplitz path (`zoo.nn.toeplitz`), or None where it does not apply: keys other than the queries
    (a KV cache), padding, attention dropout, positions other than consecutive token indices, a device without
    the kernel, or an encoding whose bias is not Toeplitz at this length."""
    n = q.shape[-2]
    if k.shape[-2] != n or (attn.training and attn.attn_drop.p > 0) or not toeplitz.available(q)[0]:
        return None
    if pos is not None and (pos.mask is not None or not consecutive(pos.ids, n)):
        return None
    table = attn.pe.shared_bias_table(n, pos, q.device)                          # [h|1, 2n - 1]
    if table is None:
        return None
    if not pre_scaled:
        q = attn._scaled(q, 0)
    return toeplitz.toeplitz_attention(q, k, v, table, attn.scale, causal)


def consecutive(ids: Optional[Tensor], n: int) -> bool:
    """Whether ``ids`` (``[n]`` / ``[b, n]`` or None) are consecutive integers, the same in every row (a Toeplitz
    bias over token indices applies): None, or ``ids[..., t] = ids[..., 0] + t``."""
    if ids is None:
        return True
    if ids.is_floating_point() or ids.shape[-1] != n or ids.ndim not in (1, 2):
        return False
    if ids.ndim == 2:
        if ids.shape[0] > 1 and ids.stride(0) != 0 and not bool((ids == ids[:1]).all()):
            return False
        ids = ids[0]
    return n < 2 or bool((ids[1:] - ids[:-1] == 1).all())
