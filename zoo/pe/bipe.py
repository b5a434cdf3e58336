"""BiPE: He, Feng, Luo et al., "Two Stones Hit One Bird: Bilevel Positional Encoding for Better Length
Extrapolation", ICML 2024 (arXiv 2401.16421); official code zhenyuhe00/BiPE @3dddab3 (REFERENCES.md section 4).

A text is cut into segments at separator tokens.  Every token gets two positions:

* intra-segment: its index inside the segment, encoded by a learned *absolute* embedding added to the token
  embeddings (`BiPEIntraEmbedding`);
* inter-segment: the segment index, encoded by a *relative* encoding in attention: RoPE (`BiPERoPE`) or ALiBi with
  slopes x96 (`BiPEALiBi`).

Official semantics (``LlamaModel.get_bilevel_ids(ids, train_scale=1024)``), reproduced by `bipe_ids`: a separator
belongs to the segment it closes; intra restarts at 0 after it and is clipped at ``train_scale - 1``; inter is the
exclusive cumulative sum of separators.  The separators are Llama-2 ids 869 (' .') and 13 (newline); the attached
period 29889 is not one, so segments are close to lines::

    ids    1 5 6 869 | 7 8 13 | 9 869 | 10 11
    intra  0 1 2  3  | 0 1  2 | 0  1  |  0  1
    inter  0 0 0  0  | 1 1  1 | 2  2  |  3  3

Positions carry them as ``Positions(ids=intra, segments=inter)`` (`bipe_positions`).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..positions import Positions
from .alibi import alibi_slopes, slopes_on
from .base import PositionalEncoding
from .registry import register_pe
from .rope import RoPE

__all__ = ["LLAMA2_SEPARATORS", "segment_intra", "bipe_ids", "bipe_positions", "BiPEIntraEmbedding", "BiPERoPE",
           "BiPEALiBi"]

#: Llama-2 tokenizer ids the official code splits segments at: 869 ('▁.') and 13 ('<0x0A>').
LLAMA2_SEPARATORS = (869, 13)


def segment_intra(segments: Tensor, max_intra: Optional[int] = None) -> Tensor:
    """Index of every token inside its run of equal segment ids: ``j - first(j)``, ``first(j)`` = the first token of
    the run that holds ``j`` (BiPE's intra-segment position); clipped at ``max_intra - 1`` (the official
    ``train_scale``).  The one implementation of the intra index: `bipe_ids` and the models' BiPE tables use it.

    ``segments`` ``[b, n]`` or ``[n]`` -> int64 of the same shape."""
    if not isinstance(segments, Tensor) or segments.ndim not in (1, 2):
        raise ValueError(f"segments must be a [b, n] or [n] tensor, got "
                         f"{tuple(segments.shape) if isinstance(segments, Tensor) else type(segments).__name__}")
    n = segments.shape[-1]
    idx = torch.arange(n, device=segments.device).expand(segments.shape)          # [b?, n]
    start = torch.ones(segments.shape, dtype=torch.bool, device=segments.device)
    start[..., 1:] = segments[..., 1:] != segments[..., :-1]                      # a segment starts here
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=-1).values  # [b?, n] its first token
    intra = idx - first
    return intra if max_intra is None else intra.clamp(max=max_intra - 1)


def bipe_ids(input_ids: Tensor, separator_ids: Union[Iterable[int], Tensor] = LLAMA2_SEPARATORS,
             max_intra: int = 1024) -> Tuple[Tensor, Tensor]:
    """Intra- and inter-segment positions of BiPE (official ``get_bilevel_ids``).

    Args:
        input_ids: ``[b, n]`` or ``[n]`` token ids.
        separator_ids: ids that close a segment (the separator is the last token of its segment).
        max_intra: ``train_scale``: intra positions are clipped to ``max_intra - 1``.

    Returns:
        ``(intra, inter)``, int64, each shaped like ``input_ids``.
    """
    if not isinstance(input_ids, Tensor) or input_ids.ndim not in (1, 2):
        raise ValueError(f"input_ids must be a [b, n] or [n] tensor, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__}")
    if input_ids.is_floating_point() or input_ids.is_complex():
        raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    if not isinstance(max_intra, int) or isinstance(max_intra, bool) or max_intra <= 0:
        raise ValueError(f"max_intra must be a positive int, got {max_intra!r}")
    seps = torch.as_tensor(list(separator_ids) if not isinstance(separator_ids, Tensor) else separator_ids,
                           dtype=torch.long, device=input_ids.device).flatten()
    if seps.numel() == 0:
        raise ValueError("separator_ids must name at least one token id")
    sep = torch.isin(input_ids.long(), seps).long()                            # [..., n]
    inter = sep.cumsum(-1) - sep                                                 # exclusive cumsum
    return segment_intra(inter, max_intra), inter


def bipe_positions(input_ids: Tensor, separator_ids: Union[Iterable[int], Tensor] = LLAMA2_SEPARATORS,
                   max_intra: int = 1024, causal: bool = False, mask: Optional[Tensor] = None) -> Positions:
    """`Positions` for BiPE: ``ids`` = intra-segment index, ``segments`` = segment index (see `bipe_ids`)."""
    intra, inter = bipe_ids(input_ids, separator_ids, max_intra)
    return Positions(ids=intra, segments=inter, causal=causal, mask=mask)


@register_pe("bipe_intra", positions="1d", paper="He et al., Two Stones Hit One Bird: Bilevel Positional Encoding "
             "for Better Length Extrapolation, ICML 2024, arXiv:2401.16421", causal_ok=True,
             geometry={"max_intra": "max_len"})
class BiPEIntraEmbedding(PositionalEncoding):
    """BiPE's intra-segment learned absolute position embedding (official ``embeds[0]``, an ``nn.Embedding``).

    Args:
        max_intra: rows of the table (``train_scale``, 1024 officially).
        dim: model width ``C``.
        padding_idx: a row kept at zero and without gradient, as ``nn.Embedding(padding_idx=...)``.  The official
            config has ``pad_token_id=-1``, i.e. row ``max_intra - 1`` -- exactly the clip value of long segments;
            pass ``padding_idx=-1`` to train the official way.  Default None: every row is learned.
        init_std: std of the normal init (HF Llama ``initializer_range`` 0.02).

    ``embed(x, pos)``, x ``[b, n, C]``: adds ``weight[pos.ids]``; ``pos.ids`` ``[b, n]`` or ``[n]`` are the intra
    positions (`bipe_ids`), integers in ``0 .. max_intra - 1``.  ``weight`` is ``[max_intra, C]`` so the official
    ``model.embeds.0.weight`` loads unchanged.
    """

    def __init__(self, max_intra: int, dim: int, padding_idx: Optional[int] = None, init_std: float = 0.02):
        super().__init__()
        if not isinstance(max_intra, int) or isinstance(max_intra, bool) or max_intra <= 0:
            raise ValueError(f"max_intra must be a positive int, got {max_intra!r}")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if padding_idx is not None:
            if not isinstance(padding_idx, int) or not -max_intra <= padding_idx < max_intra:
                raise ValueError(f"padding_idx must be an int in -{max_intra}..{max_intra - 1}, got {padding_idx!r}")
            padding_idx %= max_intra
        self.max_intra, self.dim, self.padding_idx = max_intra, dim, padding_idx
        self.weight = nn.Parameter(torch.empty(max_intra, dim))                   # [max_intra, C]
        nn.init.normal_(self.weight, std=init_std)
        if padding_idx is not None:
            with torch.no_grad():
                self.weight[padding_idx].zero_()

    def extra_repr(self) -> str:
        return f"max_intra={self.max_intra}, dim={self.dim}, padding_idx={self.padding_idx}"

    def embed(self, x: Tensor, pos: Optional[Positions]) -> Tensor:
        # x [b, n, C]
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has {x.shape[-1]} channels but BiPEIntraEmbedding was built with dim={self.dim}")
        if pos is None or pos.ids is None:
            raise ValueError("BiPEIntraEmbedding needs Positions.ids (intra-segment positions from bipe_ids), "
                             "which the input does not provide")
        ids = pos.ids
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"pos.ids must be integer intra-segment positions, got {ids.dtype}")
        if ids.ndim not in (1, 2) or ids.shape[-1] != x.shape[-2]:
            raise ValueError(f"pos.ids must be [b, n] or [n] with n = {x.shape[-2]} tokens, got {tuple(ids.shape)}")
        if ids.numel() == 0:                                                     # no tokens: nothing to add
            return x + self.weight[:0].to(x.dtype)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.max_intra:
            raise ValueError(f"pos.ids must be in 0..{self.max_intra - 1} (max_intra={self.max_intra}; bipe_ids clips "
                             f"to it), got min {lo}, max {hi}")
        # F.embedding semantics: the padding row gets no gradient
        table = nn.functional.embedding(ids.to(x.device), self.weight, padding_idx=self.padding_idx)  # [b?, n, C]
        return x + table.to(x.dtype)


def _segments(pos: Optional[Positions], nk: int, by: str) -> Tensor:
    if pos is None or pos.segments is None:
        raise ValueError(f"{by} needs Positions.segments (segment ids from bipe_ids), which the input does not provide")
    seg = pos.segments
    if seg.ndim not in (1, 2):
        raise ValueError(f"pos.segments must be [b, n] or [n], got shape {tuple(seg.shape)}")
    if seg.shape[-1] != nk:
        raise ValueError(f"pos.segments has {seg.shape[-1]} positions but k has {nk} (segments describe the keys)")
    return seg


@register_pe("bipe_rope", positions="1d", paper="He et al., Two Stones Hit One Bird: Bilevel Positional Encoding for "
             "Better Length Extrapolation, ICML 2024, arXiv:2401.16421", causal_ok=True, relative=True)
class BiPERoPE(RoPE):
    """BiPE-RoPE: plain RoPE (base 10000, rotate-half as the official Llama code) driven by the segment index.

    Same arguments as `RoPE`.  ``rotate(q, k, pos)`` reads ``pos.segments`` (``[b, nk]`` or ``[nk]``) instead of
    ``pos.ids``; with a KV cache the queries are the last ``nq`` keys.  (The official model has no KV cache.)
    """

    reads = ("segments",)                                                        # the Positions field it reads

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        seg = _segments(pos, k.shape[-2], "BiPERoPE")
        return super().rotate(q, k, Positions(ids=seg))


@register_pe("bipe_alibi", positions="1d", paper="He et al., Two Stones Hit One Bird: Bilevel Positional Encoding "
             "for Better Length Extrapolation, ICML 2024, arXiv:2401.16421", causal_ok=True, relative=True)
class BiPEALiBi(PositionalEncoding):
    """BiPE-ALiBi: ALiBi on segment ids with the standard slopes times 96 (official ``_init_alibi_mul96``).

    Args:
        num_heads: heads of the attention it serves.
        causal: ``-m'_h (seg_i - seg_j)`` for ``seg_j <= seg_i`` and 0 for later segments (pair with a causal mask);
            else ``-m'_h |seg_i - seg_j|``.
        slope_multiplier: ``m'_h = slope_multiplier * m_h`` with ``m_h`` = `alibi_slopes` (96 in BiPE).

    ``bias(q, k, pos, scale)`` returns ``[b|1, h, nq, nk]`` float32 from ``pos.segments`` (queries = the last
    ``nq`` keys).  ``scale`` is unused: the bias is added to logits already scaled by ``1/sqrt(d)``, as officially
    (where ``alibi[h, seg_j]`` is added per key: the same up to a row constant that softmax ignores).
    """

    bias_from_positions_only = True
    reads = ("segments",)                                                        # the Positions field it reads

    def __init__(self, num_heads: int, causal: bool = False, slope_multiplier: float = 96.0):
        super().__init__()
        if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        ok = isinstance(slope_multiplier, (int, float)) and math.isfinite(slope_multiplier)
        if not ok or slope_multiplier <= 0:
            raise ValueError(f"slope_multiplier must be a positive number, got {slope_multiplier!r}")
        self.num_heads, self.causal, self.slope_multiplier = num_heads, bool(causal), float(slope_multiplier)
        # a plain attribute, not a buffer: module.half() must not round the slopes
        self._slopes: Dict[torch.device, Tensor] = {
            torch.device("cpu"): alibi_slopes(num_heads) * self.slope_multiplier}

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, causal={self.causal}, slope_multiplier={self.slope_multiplier:g}"

    def slopes(self, device=None) -> Tensor:
        """float32 ``[num_heads]``: ``slope_multiplier * alibi_slopes(num_heads)``."""
        return slopes_on(self._slopes, device)

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Tensor:
        # q [b, h, nq, d], k [b, h, nk, d]
        return self.bias_rows(q, k, pos, scale, k.shape[-2] - q.shape[-2])

    def bias_rows(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float, start: int) -> Tensor:
        # q [b, h, c, d]: the queries at key indices start .. start + c - 1; k [b, h, nk, d]
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q has {q.shape[1]} heads but BiPEALiBi was built with num_heads={self.num_heads}")
        nq, nk = q.shape[-2], k.shape[-2]
        if nq > nk:
            raise ValueError(f"q has {nq} positions but k only {nk}: queries must be the last nq of the keys")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0 or start + nq > nk:
            raise ValueError(f"BiPEALiBi: a block of {nq} queries starting at key {start!r} does not fit in {nk} keys")
        seg = _segments(pos, nk, "BiPEALiBi").to(q.device)
        if seg.ndim == 2 and seg.shape[0] > 1 and seg.stride(0) == 0:
            seg = seg[0]                                                         # expanded batch: one bias
        seg = seg.to(torch.float32)
        dist = seg[..., start:start + nq, None] - seg[..., None, :]              # [b?, c, nk]  seg_i - seg_j
        dist = dist.clamp(min=0) if self.causal else dist.abs()
        b = -dist.unsqueeze(-3) * self.slopes(q.device)[:, None, None]           # [b?, h, c, nk]
        return b if b.ndim == 4 else b[None]
