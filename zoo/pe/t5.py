"""T5 relative position buckets: Raffel et al., "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer", JMLR 2020 (Mesh TensorFlow ``_relative_position_bucket``; HF transformers
``T5Attention._relative_position_bucket`` is the reference the tests compare against).

``relative_position = key - query`` (``memory_position - context_position``) is mapped to one of ``num_buckets``
buckets; every head owns one learned scalar per bucket::

    bidirectional: half of the buckets for keys after the query (rel > 0), half for the rest; n = |rel|
    causal:        n = max(-rel, 0)  (keys after the query all share bucket 0; a causal mask removes them)
    nb' = num_buckets / 2 if bidirectional else num_buckets;   max_exact = nb' / 2
    n <  max_exact : bucket n                                   (exact, one per distance)
    n >= max_exact : max_exact + int(ln(n / max_exact) / ln(max_distance / max_exact) * (nb' - max_exact)),
                     capped at nb' - 1                           (logarithmic, all n >= max_distance share one)

Logit scale.  HF/Mesh T5 has no ``1/sqrt(d)``: logits are ``q.k + bias`` (the scale is folded into the q
initialisation).  Our `Attention` computes ``q.k / sqrt(d) + bias``.  With ``unscaled_qk=True`` the encoding also
multiplies the queries by ``sqrt(d)`` in the ``rotate`` hook, so the attention's ``q.k / sqrt(d)`` is T5's raw
``q.k`` and a T5 checkpoint (``q, k, v, o`` -> ``qkv`` / ``proj`` with zero biases, ``relative_attention_bias.weight``
unchanged) gives HF's logits exactly (up to float rounding).  With the default ``unscaled_qk=False`` the bias is added
to the scaled logits, as x-transformers does (it additionally multiplies its table by ``sqrt(d)``; ours is not).
T5 computes the table in the first layer only and reuses its output in every layer: share one `T5RelativeBias`
instance across the layers to reproduce that.
"""
from __future__ import annotations

import math
import operator
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..positions import Positions
from .base import PositionalEncoding
from .registry import register_pe
from .relative import check_table_length, query_key_positions, toeplitz_offsets

__all__ = ["t5_bucket", "T5RelativeBias", "T5RelativeBiasUnscaledQK"]


def _check_buckets(num_buckets: int, max_distance: int, bidirectional: bool) -> int:
    """Validate and return ``max_exact``."""
    least = 4 if bidirectional else 2
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < least:
        raise ValueError(f"num_buckets must be an int >= {least} (bidirectional={bidirectional}), got {num_buckets!r}")
    nb = num_buckets // 2 if bidirectional else num_buckets
    max_exact = nb // 2
    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, float)) or max_distance <= max_exact:
        raise ValueError(f"max_distance must be a number > max_exact={max_exact} (num_buckets={num_buckets}), "
                         f"got {max_distance!r}")
    return max_exact


def t5_bucket(relative_position: Tensor, bidirectional: bool = True, num_buckets: int = 32,
              max_distance: int = 128) -> Tensor:
    """T5 bucket ids (long, same shape) of ``relative_position = key - query`` (see the module docstring).

    Float relative positions are rounded to the nearest integer first."""
    if not isinstance(relative_position, Tensor):
        raise ValueError(f"relative_position must be a Tensor, got {type(relative_position).__name__}")
    max_exact = _check_buckets(num_buckets, max_distance, bidirectional)
    rel = relative_position
    if rel.is_floating_point():
        rel = rel.round()
    rel = rel.long()
    if bidirectional:
        nb = num_buckets // 2
        base = (rel > 0).long() * nb                                              # keys after the query: upper half
        n = rel.abs()
    else:
        nb = num_buckets
        base = torch.zeros_like(rel)
        n = (-rel).clamp(min=0)
    # the log branch is only used for n >= max_exact; clamping keeps log() finite elsewhere without changing it
    ratio = n.clamp(min=max_exact).float() / max_exact
    large = max_exact + (torch.log(ratio) / math.log(max_distance / max_exact) * (nb - max_exact)).long()
    large = large.clamp(max=nb - 1)
    return base + torch.where(n < max_exact, n, large)


@register_pe("t5", positions="1d", paper="Raffel et al., Exploring the Limits of Transfer Learning with a Unified "
             "Text-to-Text Transformer, JMLR 2020, arXiv:1910.10683", causal_ok=True, relative=True,
             geometry={"bidirectional": ("causal", operator.not_)})
class T5RelativeBias(PositionalEncoding):
    """T5 relative position bias on the ``bias`` hook: a learned ``[num_buckets, num_heads]`` table indexed by the
    bucket of ``pos_k - pos_q``.

    Args:
        num_heads: heads of the attention it serves.
        num_buckets: 32 in T5.
        max_distance: 128 in T5 (distances beyond share the last bucket).
        bidirectional: True for encoders, False for decoders (T5's ``not is_decoder``).
        unscaled_qk: also multiply queries by ``sqrt(head_dim)`` (``rotate`` hook) so that logits are T5's unscaled
            ``q.k + bias``; see the module docstring.  Returns a `T5RelativeBiasUnscaledQK`.
        init_std: std of the normal initialisation of the table (0.02; HF T5 uses ``d_model^-0.5``).

    The table is ``relative_attention_bias.weight`` (an ``nn.Embedding``, as in HF T5) so T5 weights load by name.
    ``bias`` returns float32 ``[1, h, nq, nk]`` (token indices, queries = the last ``nq`` keys) or ``[b|1, h, nq,
    nk]`` from ``pos.ids`` (any integer positions; floats are rounded after subtraction).
    """

    bias_from_positions_only = True

    max_cache = 8

    def __new__(cls, *args, **kwargs):
        if cls is T5RelativeBias:
            flag = kwargs.get("unscaled_qk", args[4] if len(args) > 4 else False)
            if flag:
                cls = T5RelativeBiasUnscaledQK
        return super().__new__(cls)

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True,
                 unscaled_qk: bool = False, init_std: float = 0.02):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        _check_buckets(num_buckets, max_distance, bool(bidirectional))
        if not init_std >= 0:
            raise ValueError(f"init_std must be >= 0, got {init_std!r}")
        self.num_heads, self.num_buckets, self.max_distance = num_heads, num_buckets, max_distance
        self.bidirectional, self.unscaled_qk = bool(bidirectional), bool(unscaled_qk)
        self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)
        nn.init.normal_(self.relative_attention_bias.weight, std=init_std)
        self._cache: Dict[Tuple, Tensor] = {}

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, num_buckets={self.num_buckets}, max_distance={self.max_distance}, "
                f"bidirectional={self.bidirectional}, unscaled_qk={self.unscaled_qk}")

    def buckets(self, nq: int, nk: int, pos: Optional[Positions] = None, device=None) -> Tensor:
        """Bucket ids ``[b?, nq, nk]`` for queries = the last ``nq`` of ``nk`` keys (index-based ones cached)."""
        if pos is None or pos.ids is None:
            key = (nq, nk, torch.device("cpu" if device is None else device), torch.is_inference_mode_enabled())
            hit = self._cache.get(key)
            if hit is None:
                pi, pj = query_key_positions(None, nq, nk, device, by="T5RelativeBias")
                hit = t5_bucket(pj - pi, self.bidirectional, self.num_buckets, self.max_distance)
                while len(self._cache) >= self.max_cache:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = hit
            return hit
        pi, pj = query_key_positions(pos, nq, nk, device, by="T5RelativeBias")
        return t5_bucket(pj - pi, self.bidirectional, self.num_buckets, self.max_distance)

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, nq, d], k [b, h, nk, d]
        self._check(q)
        ids = self.buckets(q.shape[-2], k.shape[-2], pos, q.device)               # [b?, nq, nk]
        return self._lookup(ids)

    def bias_rows(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float, start: int) -> Tensor:
        # q [b, h, c, d]: the queries at key indices start .. start + c - 1; k [b, h, nk, d]; buckets not cached
        self._check(q)
        pi, pj = query_key_positions(pos, q.shape[-2], k.shape[-2], q.device, by="T5RelativeBias", start=start)
        return self._lookup(t5_bucket(pj - pi, self.bidirectional, self.num_buckets, self.max_distance))

    def bias_table(self, n: int, device=None) -> Tensor:
        """``[h, 2n - 1]`` float32: the bias at key - query offset ``o - n + 1`` (`PositionalEncoding.bias_table`)."""
        check_table_length(n, "T5RelativeBias")
        ids = t5_bucket(toeplitz_offsets(n, device), self.bidirectional, self.num_buckets, self.max_distance)
        return F.embedding(ids, self.relative_attention_bias.weight.float()).t()  # [h, 2n - 1]

    def _check(self, q: Tensor) -> None:
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q has {q.shape[1]} heads but T5RelativeBias was built with num_heads={self.num_heads}")

    def _lookup(self, ids: Tensor) -> Tensor:
        vals = F.embedding(ids, self.relative_attention_bias.weight.float())      # [b?, nq, nk, h] float32
        vals = vals.movedim(-1, -3)                                               # [b?, h, nq, nk]
        return vals if vals.ndim == 4 else vals[None]


class T5RelativeBiasUnscaledQK(T5RelativeBias):
    """`T5RelativeBias` that also undoes the attention's ``1/sqrt(d)`` on the queries (``rotate`` hook), giving T5's
    unscaled logits ``q.k + bias``.  Built by ``T5RelativeBias(..., unscaled_qk=True)``."""

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        # the attention multiplies q.k by head_dim^-0.5 (zoo.nn.Attention.scale); cancel it on the queries only
        return q * (q.shape[-1] ** 0.5), k
