"""One softmax attention for every model.

    x [b, n, c] --qkv--> q, k, v [b, h, n, d] --pe.rotate--> q, k
        fast path : SDPA(q, k, v, attn_mask = pe.bias + padding/causal mask)   (or is_causal=True)
        slow path : softmax(q k^T * scale + bias) @ v  + pe.value(weights)    (only when the PE reads weights)

The bias of a layer is built once per forward (the PE returns all heads at once) and handed to SDPA as a float
``attn_mask``.

KV cache (decoders): ``forward(x, pos, cache)`` with a per-layer `KVCache` that holds the keys (already rotated) and
values of earlier tokens::

    x [b, nq, c] -> q, k, v [b, h, nq, d] --pe.rotate(q, k, pos.tail(nq))--> cat(cache.k, k) [b, h, nk, d]
        --pe.bias(q, k_all, pos, scale)--> SDPA with the queries aligned to the last nq keys (causal)

``pos`` describes all ``nk = cache.length + nq`` keys; only the new queries and keys are rotated (a rotation
depends on its own token's position only), biases see every key.  Without a cache nothing changes.

Long sequences (`zoo.nn.chunked`): when the bias path would build ``[b, h, nq, nk]`` float32 tensors larger than
``max_bias_bytes`` (256 MiB), or when ``chunk_size`` is set, the queries are processed in chunks, each recomputed
in backward; encodings with ``bias_rows`` (ALiBi, KERPLE, FIRE, T5, BiPE-ALiBi) then never build the full bias::

    for each block of queries q_c [b, h, c, d]:  pe.bias_rows(q_c, k, pos, scale, start) + mask rows -> softmax @ v

Toeplitz biases (`zoo.nn.toeplitz`): an encoding with ``bias_table`` (ALiBi, T5, KERPLE, FIRE, Sandwich) over token
positions, self-attention without padding, window or dropout, runs the fused CPU kernel with the bias read from an
O(n) table (`fused_bias`, on by default; other devices and inputs take the paths above)::

    table [h, 2n - 1] = pe.bias_table(n)  --> flash kernel, mask = strided view of the table (keys reversed)

FlexAttention (`zoo.nn.flex`, attribute ``flex``): on CUDA a Toeplitz table or contextual iRPE (``pe.flex_attention``,
buckets computed in the kernel) runs as a FlexAttention ``score_mod``, forward and backward, with no ``[n, n]`` bias.
On the CPU it is forward-only in torch 2.14 and measured slower than the query-chunked SDPA path, so it runs there
only when asked for (``flex=True``).

Masks and temperature (`zoo.nn.masks`, `zoo.nn.temperature`): ``mask`` (an `AttentionMask`: sliding window, sinks,
block-causal) and ``Positions.doc_ids`` (packed documents: block-diagonal) are rules over absolute token indices, so
the same rule renders a full forward, a chunk of query rows and KV-cache decoding; ``temperature`` multiplies the
rotated queries after the bias hook has read them (the content term ``q . k`` only), by the queries' token indices::

    logits = (m(i) * q_i) . k_j * scale + bias_ij + (0 if mask allows (i, j) else -inf) + padding + causal

A mask beyond plain causal leaves SDPA's ``is_causal`` path (it becomes part of the float ``attn_mask``) and, for long
inputs, takes the chunked path like a bias does.

Key names (``qkv``, ``proj``) follow timm's ViT so that ViT checkpoints load unchanged.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..pe.base import refuse_torchscript
from ..positions import Positions
from .cache import KVCache, StreamingKVCache  # the decoders' caches (re-exported: zoo.nn.attention.KVCache)
from .chunked import DEFAULT_MAX_BIAS_BYTES, biased_gemm_attention, plan_chunk_rows, run_query_chunks
from .masks import AttentionMask
from .temperature import Temperature

__all__ = ["Attention", "KVCache", "StreamingKVCache", "build_attn_mask", "split_heads", "merge_heads"]


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
                    dtype: torch.dtype, device, query_start: Optional[int] = None) -> Optional[Tensor]:
    """Sum a logit bias with the padding and causal masks into one additive float mask ``[b|1, h|1, nq, nk]``.

    The queries are the last ``nq`` of the ``nk`` keys, or the keys ``query_start .. query_start + nq - 1`` (a
    block of queries).  Returns None when there is nothing to add."""
    mask = None if bias is None else bias.to(dtype)
    neg = torch.finfo(dtype).min
    masked = False
    if pos is not None and pos.mask is not None:
        pad = ~pos.mask.to(device=device, dtype=torch.bool)[:, None, None, :]          # [b, 1, 1, nk]
        pad = torch.zeros(pad.shape, dtype=dtype, device=device).masked_fill(pad, neg)
        mask = pad if mask is None else mask + pad
        masked = True
    if causal:
        # queries are the last nq of nk positions (KV caches put earlier keys first) unless a block is given
        start = nk - nq if query_start is None else query_start
        keep = torch.ones(nq, nk, dtype=torch.bool, device=device).tril(diagonal=start)
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
        chunk_size: queries per chunk on the bias path (`zoo.nn.chunked`): None = automatic (chunk only when
            ``b * h * nq * nk * 4`` bytes exceed ``max_bias_bytes``), 0 = never chunk, n > 0 = chunks of n
            queries whenever ``nq > n``.  An attribute too (``model.apply`` can set it on every layer).
        mask: an `AttentionMask` (window, sinks, block-causal, per-document) applied on every path; None = none.
            Its ``causal`` follows the attention's (a causal attention makes the rule causal).  ``Positions.doc_ids``
            in the input switches the per-document rule on by itself.
        temperature: a `Temperature` multiplying the queries (after rotation and the bias hook); None = none.
        layer_idx: this attention's 0-based layer (a `Temperature` may depend on it, e.g. skip the first layers).
        extension: a `zoo.nn.options.ContextExtension` (SelfExtend, STRING, LM-Infinite, Ms-PoE) that computes the
            attention from the un-rotated q, k with the RoPE encoding ``pe`` at positions ``pos.ids`` (causal only;
            the KV cache then holds un-rotated keys, rotated again at every step).

    ``max_bias_bytes`` (attribute, 256 MiB by default; None disables automatic chunking) is the automatic threshold.
    ``fused_bias`` (attribute, True by default): run Toeplitz biases through `zoo.nn.toeplitz` where it applies;
    False = the direct form (bias tensor + SDPA or query chunks).
    ``flex`` (attribute): None = FlexAttention on CUDA where the encoding has a FlexAttention form; True = wherever
    it can run (CPU inference included), a ConfigError saying why where it cannot; False = never.
    """

    max_bias_bytes: Optional[int] = DEFAULT_MAX_BIAS_BYTES
    fused_bias: bool = True
    flex: Optional[bool] = None

    def __prepare_scriptable__(self):
        refuse_torchscript(self)

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, pe: Optional[nn.Module] = None, causal: bool = False,
                 chunk_size: Optional[int] = None, mask: Optional[AttentionMask] = None,
                 temperature: Optional[Temperature] = None, layer_idx: int = 0,
                 extension: Optional[nn.Module] = None):
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
        self.chunk_size = chunk_size
        self.mask = mask
        if temperature is not None and not isinstance(temperature, Temperature):
            raise ConfigError(f"temperature must be a zoo.nn.temperature.Temperature or None, got "
                              f"{type(temperature).__name__}")
        self.temperature = temperature                                          # a submodule (HeadTemperature learns)
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or layer_idx < 0:
            raise ValueError(f"layer_idx must be an int >= 0, got {layer_idx!r}")
        self.layer_idx = layer_idx
        self.set_extension(extension)

    def set_extension(self, extension: Optional[nn.Module]) -> None:
        """Use a `ContextExtension` (or None) from now on; it needs a causal attention with a RoPE encoding."""
        from ..pe.rope import RoPE
        from .options import ContextExtension
        if extension is not None:
            if not isinstance(extension, ContextExtension):
                raise ConfigError(f"extension must be a zoo.nn.options.ContextExtension or None, got "
                                  f"{type(extension).__name__}")
            if not isinstance(self.pe, RoPE):
                raise ConfigError(f"the {type(extension).__name__} extension remaps RoPE positions: the attention's "
                                  f"encoding must be a RoPE (zoo.pe 'rope' or a scaled variant), got "
                                  f"{type(self.pe).__name__ if self.pe is not None else 'none'}")
            if not self.causal:
                raise ConfigError(f"the {type(extension).__name__} extension is for causal (decoder) attention")
            if self.mask is not None:
                raise ConfigError(f"the {type(extension).__name__} extension brings its own mask; this attention "
                                  f"already has {self.mask}")
        if extension is not None:
            extension.layer_idx = self.layer_idx
        self.extension = extension

    @property
    def mask(self) -> Optional[AttentionMask]:
        return self._mask

    @mask.setter
    def mask(self, value: Optional[AttentionMask]) -> None:
        if value is not None and not isinstance(value, AttentionMask):
            raise ConfigError(f"mask must be a zoo.nn.masks.AttentionMask or None, got {type(value).__name__}")
        if value is not None and self.causal and value.block is not None:
            raise ConfigError(f"mask: block={value.block} (block-causal) in a causal attention: the causal mask is "
                              f"stricter inside each block; use one or the other")
        self._mask = value

    @property
    def chunk_size(self) -> Optional[int]:
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, value: Optional[int]) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"chunk_size must be None (automatic), 0 (never chunk) or a positive int, got {value!r}")
        self._chunk_size = value

    def forward(self, x: Tensor, pos: Optional[Positions] = None, cache: Optional[KVCache] = None,
                key: Optional[Tensor] = None, value: Optional[Tensor] = None,
                query_pos: Optional[Positions] = None) -> Tensor:
        """``x [b, n, c]``.  With ``cache``, ``x`` holds only the new tokens, ``pos`` describes all keys (cached +
        new) and the cache is extended in place.

        Keys and values from other inputs (cross-attention, DETR's ``q = k = src + pos_embed, v = src``): ``key``
        ``[b, nk, c]`` (default ``x``) and ``value`` ``[b, nk, c]`` (default ``key``) go through the k and v rows of
        the fused ``qkv`` weight, ``x`` through its q rows.  ``pos`` then describes the keys (their padding mask,
        rotation); ``query_pos`` the queries, rotated apart from the keys (rotary encodings only: a bias encoding
        places the queries among the keys).  Without ``key`` / ``value`` the fused projection runs once."""
        if key is None and value is None:
            q, k, v = split_heads(self.qkv(x), self.num_heads)                    # [b, h, n, d] each
        else:
            if cache is not None or self.causal:
                raise ValueError("key= / value= (keys from another sequence) cannot be used with a KV cache or a "
                                 "causal attention")
            q, k, v = self.project(x, key, value)                                # [b, h, nq | nk, d]
        if self.extension is not None:
            if key is not None or value is not None or query_pos is not None:
                raise ValueError(f"the {type(self.extension).__name__} extension is self-attention only (no key=, "
                                 f"value= or query_pos=)")
            out = self.attend_extended(q, k, v, pos, cache)
        elif query_pos is not None:
            out = self.attend_cross(q, k, v, query_pos, pos)
        elif cache is None:
            out = self.attend(q, k, v, pos, cross=key is not None or value is not None)   # [b, h, n, d]
        else:
            out = self.attend_cached(q, k, v, pos, cache)
        return self.proj_drop(self.proj(merge_heads(out)))                       # [b, n, c]

    def project(self, query: Tensor, key: Optional[Tensor] = None, value: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor, Tensor]:
        """q, k, v ``[b, h, n, d]`` from separate inputs ``[b, n, c]`` through the three row blocks of the fused
        ``qkv`` weight (q | k | v, ``nn.MultiheadAttention.in_proj_weight``'s order); ``key`` defaults to
        ``query``, ``value`` to ``key``."""
        key = query if key is None else key
        value = key if value is None else value
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key and value must be [b, nk, c] with the same b and nk, got {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        wq, wk, wv = self.qkv.weight.chunk(3)                                    # [c, c] each
        bq, bk, bv = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None, None, None)
        h, d = self.num_heads, self.head_dim
        return tuple(F.linear(t, w, bias).view(t.shape[0], t.shape[1], h, d).transpose(1, 2)   # [b, h, n, d]
                     for t, w, bias in ((query, wq, bq), (key, wk, bk), (value, wv, bv)))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions], cross: bool = False) -> Tensor:
        """Attention on ``[b, h, n, d]`` tensors, with the PE hooks applied (``cross``: the keys come from another
        input, so masks over token indices do not apply)."""
        if self.pe is not None:
            q, k = self.pe.rotate(q, k, pos)
        return self._attend_rotated(q, k, v, pos, cross=cross)

    def attend_cross(self, q: Tensor, k: Tensor, v: Tensor, query_pos: Positions, pos: Optional[Positions]
                     ) -> Tensor:
        """Attention of queries ``[b, h, nq, d]`` at ``query_pos`` over keys ``[b, h, nk, d]`` at ``pos``: each side
        rotated by its own positions, then the masks of ``pos`` (keys)."""
        pe = self.pe
        if pe is not None:
            if pe.has_bias or pe.needs_weights:
                raise ValueError(f"query_pos: {type(pe).__name__} adds a bias that places the queries among the keys; "
                                 f"only rotary encodings take separate query positions")
            q = pe.rotate(q, q, query_pos)[0]
            k = pe.rotate(k, k, pos)[1]
        return self._attend_rotated(q, k, v, pos, cross=True)

    def attend_cached(self, q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions], cache: KVCache) -> Tensor:
        """Attention of the new ``q, k, v`` ``[b, h, nq, d]`` over the cached keys plus the new ones.

        ``pos`` describes all ``nk = cache.length + nq`` keys (None: token indices ``0..nk-1``); the rotation sees
        ``pos.tail(nq)``, the bias hook and the masks see ``pos``.  The rotated new keys and the values are added to
        ``cache``."""
        if isinstance(cache, StreamingKVCache):
            return self.attend_streaming(q, k, v, pos, cache)
        nq, past = q.shape[-2], cache.length
        nk = past + nq
        if pos is not None:
            n = pos.num_tokens
            if n is not None and n != nk:
                raise ValueError(f"pos describes {n} tokens but the attention sees {nk} keys ({past} cached + {nq} "
                                 f"new): with a KV cache, pos must describe all keys, past and new")
        if self.pe is not None and self.pe.has_rotate:
            if pos is None:
                new_pos = Positions(ids=torch.arange(past, nk, device=q.device))
            else:
                new_pos = pos.tail(nq)
            q, k = self.pe.rotate(q, k, new_pos)
        k, v = cache.append(k, v)                                                # [b, h, nk, d]
        return self._attend_rotated(q, k, v, pos)

    def attend_streaming(self, q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions],
                         cache: StreamingKVCache) -> Tensor:
        """Attention of the new ``q, k, v`` ``[b, h, nq, d]`` over a `StreamingKVCache` (held keys + new ones), then
        eviction.  ``pos`` describes every token seen (``cache.length + nq``); supported encodings: none, a rotary
        one over ``Positions.ids`` (re-positioned at cache indices) and a position-only bias over ``ids`` (kept
        positions)."""
        from .fit import needs_of
        pe = self.pe
        nq = q.shape[-2]
        seen = cache.length + nq
        if pos is not None and pos.num_tokens is not None and pos.num_tokens != seen:
            raise ValueError(f"pos describes {pos.num_tokens} tokens but the streaming cache has seen {seen} "
                             f"({cache.length} before + {nq} new): pos must describe every token seen")
        if self.mask is not None or self.extension is not None or \
                (pos is not None and (pos.doc_ids is not None or pos.mask is not None)):
            raise ValueError("a streaming KV cache takes no attention mask, extension, padding mask or doc_ids")
        rotary = pe is not None and pe.has_rotate
        bias = pe is not None and pe.has_bias
        hooked = pe is not None and (rotary or bias or pe.needs_weights or pe.has_embed)
        if hooked and (pe.needs_weights or (rotary and bias) or needs_of(pe) != ("ids",)
                               or (bias and not pe.bias_from_positions_only) or pe.has_embed):
            raise ConfigError(f"a streaming KV cache re-positions rotary keys or keeps the positions of a "
                              f"position-only bias; {type(pe).__name__} is neither")
        k, v, kept = cache.add(k, v)                                             # [b, h, size + nq, d]
        n = k.shape[-2]
        if rotary:
            q, k = pe.rotate(q, k, Positions(ids=torch.arange(n, device=q.device)))   # cache indices
            out = self._attend_rotated(self._scaled_at(q, kept[n - nq:]), k, v, None, pre_scaled=True)
        else:
            kpos = None
            if bias:
                ids = pos.ids if pos is not None and pos.ids is not None else \
                    torch.arange(seen, device=q.device)
                kpos = Positions(ids=ids.index_select(-1, kept.to(ids.device)))
            out = self._attend_rotated(self._scaled_at(q, kept[n - nq:]), k, v, kpos, pre_scaled=True)
        cache.evict()
        return out

    def _scaled_at(self, q: Tensor, idx: Tensor) -> Tensor:
        """``q`` times the temperature at absolute query indices ``idx`` ``[nq]``."""
        if self.temperature is None:
            return q
        return self.temperature.scale_queries(q, idx.to(q.device), self.layer_idx)

    def attend_extended(self, q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions],
                        cache: Optional[KVCache]) -> Tensor:
        """The extension's attention on un-rotated q, k, v ``[b, h, nq, d]``; with ``cache`` the un-rotated keys are
        cached and every key is rotated again by the extension.  Positions: ``pos.ids`` (the same for every sequence
        of the batch) or token indices."""
        nq = q.shape[-2]
        past = 0 if cache is None else cache.length
        nk = past + nq
        if pos is not None and pos.doc_ids is not None:
            raise ValueError(f"the {type(self.extension).__name__} extension takes no doc_ids: run sequences of one "
                             f"document")
        if pos is not None and pos.mask is not None:
            # causal: padding after the last real token is never seen by a real one; any other padding would be
            m = pos.mask.to(torch.bool)
            if m.ndim != 2 or bool((m[:, 1:] & ~m[:, :-1]).any()):
                raise ValueError(f"the {type(self.extension).__name__} extension takes right padding only (padding "
                                 f"after the last real token of each sequence)")
        ids = None if pos is None else pos.ids
        if ids is None:
            ids = torch.arange(nk, device=q.device)
        else:
            if ids.shape[-1] != nk:
                raise ValueError(f"pos.ids describes {ids.shape[-1]} tokens but the attention sees {nk} keys ({past} "
                                 f"cached + {nq} new)")
            if ids.ndim == 2:
                if ids.shape[0] > 1 and not (ids.stride(0) == 0 or bool((ids == ids[:1]).all())):
                    raise ValueError(f"the {type(self.extension).__name__} extension needs the same positions for "
                                     f"every sequence of the batch")
                ids = ids[0]
            if ids.is_floating_point():
                raise ValueError("the extension attentions take integer positions (pos.ids)")
            ids = ids.to(q.device)
        if cache is not None:
            k, v = cache.append(k, v)                                            # un-rotated keys
        q = self._scaled(q, past)
        q_idx = ids[nk - nq:]
        ext, rope, scale = self.extension, self.pe, self.scale
        if isinstance(ext, _chunkable()):
            chunk = self._query_chunk(q, k)
            if chunk is not None:
                def block(qc, k, v, s, e):
                    return ext(qc, k, v, rope, q_idx[s:e], ids, scale)
                needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
                return run_query_chunks(block, q, k, v, chunk, recompute=needs_grad)
        return ext(q, k, v, rope, q_idx, ids, scale)

    def _rule(self, pos: Optional[Positions], causal: bool) -> Optional[AttentionMask]:
        """The mask rule of this call: ``self.mask``, made per-document when ``pos.doc_ids`` is given and causal when
        the attention is; None when nothing beyond padding and plain causal applies."""
        rule, docs = self.mask, pos is not None and pos.doc_ids is not None
        if rule is None and not docs:
            return None
        rule = rule or AttentionMask()
        if rule.per_document and not docs:
            raise ValueError("the attention mask is per_document but the input's Positions carry no doc_ids "
                             "(document id of every token, [b, n]; see Positions.packed)")
        if docs and not rule.per_document:
            rule = replace(rule, per_document=True)
        if causal and not rule.causal:
            if rule.block is not None:
                raise ConfigError(f"mask: block={rule.block} (block-causal) in a causal attention: the causal mask is "
                                  f"stricter inside each block; use one or the other")
            rule = replace(rule, causal=True)
        if not (rule.window is not None or rule.block is not None or rule.per_document):
            return None                                                          # plain causal: the usual paths
        return rule

    def _scaled(self, q: Tensor, q_start: int) -> Tensor:
        """``q`` ``[b, h, c, d]`` (the queries at token indices ``q_start ..``) times the temperature, if any."""
        if self.temperature is None:
            return q
        return self._scaled_at(q, torch.arange(q_start, q_start + q.shape[-2], device=q.device))

    def _attend_rotated(self, q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions],
                        cross: bool = False, pre_scaled: bool = False) -> Tensor:
        """Bias hook, masks, temperature and the softmax on already-rotated q ``[b, h, nq, d]``, k/v ``[b, h, nk, d]``;
        the queries are the last ``nq`` of the ``nk`` keys (``cross``: queries from another sequence)."""
        pe = self.pe
        causal = self.causal or (pos is not None and pos.causal)
        nq, nk = q.shape[-2], k.shape[-2]
        rule = self._rule(pos, causal)
        if rule is not None:
            if cross:
                raise ValueError("a window / block / per-document mask needs the queries among the keys; "
                                 "cross-attention (query_pos=) takes padding masks only")
            causal = False                                                       # the rule carries causality
        needs_weights = pe is not None and pe.needs_weights
        has_bias = pe is not None and pe.has_bias
        if has_bias and rule is None and not cross and not needs_weights:
            from .fused import attend_fused
            out = attend_fused(self, q, k, v, pos, causal, pre_scaled)          # Toeplitz kernel / FlexAttention
            if out is not None:
                return out
        chunk = self._query_chunk(q, k) if (has_bias or rule is not None) and not needs_weights else None
        if chunk is not None and (not has_bias or pe.has_bias_rows):
            return self._attend_chunked(q, k, v, pos, causal, chunk, None, rule, pre_scaled)   # no whole bias
        bias = None
        if pe is not None:
            bias = pe.shared_bias(q, k, pos, self.scale)                         # once per forward in pe.shared()
        if chunk is not None and bias is not None:
            return self._attend_chunked(q, k, v, pos, causal, chunk, bias, rule, pre_scaled)   # bias sliced
        has_pad = pos is not None and pos.mask is not None
        if not pre_scaled:
            q = self._scaled(q, 0 if cross else nk - nq)                         # after the bias hook read q
        extra = None if rule is None else rule.for_cache(nq, nk, docs=pos.doc_ids, device=q.device,
                                                         additive=q.dtype)      # [b|1, 1, nq, nk]

        if not needs_weights:
            drop = self.attn_drop.p if self.training else 0.0
            if bias is None and not has_pad and extra is None:
                if causal and nq == 1:
                    causal = False                                               # one query, last key: sees all
                return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=causal and nq == nk) \
                    if (not causal or nq == nk) else F.scaled_dot_product_attention(
                        q, k, v, attn_mask=build_attn_mask(None, None, nq, nk, True, q.dtype, q.device),
                        dropout_p=drop)
            mask = _with_rule(build_attn_mask(bias, pos, nq, nk, causal, q.dtype, q.device), extra)
            if q.device.type == "cpu" and bias is not None and bias.requires_grad and torch.is_grad_enabled():
                # On the CPU, SDPA with a float mask that needs a gradient runs its unfused math kernel; the same
                # math with the bias folded into the q.k GEMM (baddbmm) saves a pass over [b, h, n, n].
                return self._biased_gemm_attention(q, k, v, mask)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)

        # slow path: the encoding needs the attention weights
        attn = (q * self.scale) @ k.transpose(-2, -1)                            # [b, h, nq, nk]
        mask = _with_rule(build_attn_mask(bias, pos, nq, nk, causal, attn.dtype, attn.device), extra)
        if mask is not None:
            attn = attn + mask
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = attn @ v
        extra = pe.value(attn, pos)
        if extra is not None:
            out = out + extra.to(out.dtype)
        return out

    def kernel_path(self, n: int, batch: int = 1, device="cpu", grad: bool = False) -> str:
        """Which path a self-attention over ``n`` tokens at token positions (no padding, no KV cache, no mask rule)
        takes here: ``"sdpa"`` (fused, no bias), ``"toeplitz"`` (`zoo.nn.toeplitz`), ``"flex"``, ``"chunks of R"``
        (query chunks of R rows, `zoo.nn.chunked`), ``"bias"`` (one whole bias + SDPA) or ``"weights"`` (the encoding
        reads the attention weights).  For reports; the forward decides the same way (`zoo.nn.fused`)."""
        from .fused import kernel_path
        return kernel_path(self, n, batch, device, grad)

    def _biased_gemm_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """``softmax(q k^T * scale + mask) @ v`` on ``[b, h, n, d]`` with the mask added inside the GEMM."""
        return biased_gemm_attention(q, k, v, mask, self.scale, self.attn_drop)

    # ---- long sequences: query chunks (zoo.nn.chunked) ------------------------------------------------------
    def _query_chunk(self, q: Tensor, k: Tensor) -> Optional[int]:
        """Rows per query chunk for this call, or None for the unchunked path."""
        b, h, nq, _ = q.shape
        nk = k.shape[-2]
        if self.chunk_size is not None:
            return self.chunk_size if 0 < self.chunk_size < nq else None
        return plan_chunk_rows(b, h, nq, nk, getattr(self.pe, "bias_floats_per_pair", None), self.max_bias_bytes)

    def _attend_chunked(self, q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions], causal: bool, chunk: int,
                        bias: Optional[Tensor], rule: Optional[AttentionMask] = None,
                        pre_scaled: bool = False) -> Tensor:
        """The bias / mask path one block of ``chunk`` queries at a time; ``bias`` None: rows from ``pe.bias_rows``
        (when the encoding has a bias), else the full ``[b|1, h|1, nq, nk]`` bias sliced per block; ``rule``: the
        mask's rows of each block."""
        pe, scale = self.pe, self.scale
        nq, nk = q.shape[-2], k.shape[-2]
        offset = nk - nq                                                         # key index of query 0
        drop = self.attn_drop.p if self.training else 0.0
        rows = bias is None and pe is not None and pe.has_bias
        docs = None if pos is None else pos.doc_ids

        def block(qc: Tensor, k: Tensor, v: Tensor, s: int, e: int) -> Tensor:
            # qc [b, h, c, d]: the queries at key indices offset + s .. offset + e - 1
            if rows:
                bc = pe.bias_rows(qc, k, pos, scale, offset + s)                 # [b|1, h|1, c, nk]
            elif bias is not None:
                bc = bias if bias.shape[-2] == 1 else bias[..., s:e, :]
            else:
                bc = None
            if not pre_scaled:
                qc = self._scaled(qc, offset + s)
            mask = build_attn_mask(bc, pos, e - s, nk, causal, qc.dtype, qc.device, query_start=offset + s)
            if rule is not None:
                mask = _with_rule(mask, rule.rows(offset + s, e - s, nk, docs=docs, device=qc.device,
                                                  additive=qc.dtype))
            if mask is None:
                return F.scaled_dot_product_attention(qc, k, v, dropout_p=drop)
            if qc.device.type == "cpu" and bc is not None and bc.requires_grad and torch.is_grad_enabled():
                return biased_gemm_attention(qc, k, v, mask, scale, self.attn_drop)
            return F.scaled_dot_product_attention(qc, k, v, attn_mask=mask, dropout_p=drop)

        params = [] if pe is None else list(pe.parameters())
        if self.temperature is not None:
            params += list(self.temperature.parameters())
        needs_grad = torch.is_grad_enabled() and (
            q.requires_grad or k.requires_grad or v.requires_grad or (bias is not None and bias.requires_grad)
            or (bias is None and any(p.requires_grad for p in params)))
        return run_query_chunks(block, q, k, v, chunk, recompute=needs_grad, preserve_rng_state=drop > 0)


def _with_rule(mask: Optional[Tensor], rule_mask: Optional[Tensor]) -> Optional[Tensor]:
    """The sum of the padding / causal / bias mask and a rule's additive mask, clamped so that two ``-inf``-like
    terms do not overflow."""
    if rule_mask is None:
        return mask
    if mask is None:
        return rule_mask
    return (mask + rule_mask).clamp_min(torch.finfo(mask.dtype).min)


def _chunkable() -> tuple:
    """The extensions whose rows are independent (dense logits per query row): they run in query chunks."""
    from .options import LMInfinite, SelfExtend, StringShift
    return (SelfExtend, StringShift, LMInfinite)
