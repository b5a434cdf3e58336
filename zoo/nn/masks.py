"""Attention masks as rules over absolute sequence indices: causal, sliding window, sinks, block-causal, per document.

An `AttentionMask` says which key a query may see from the two tokens' absolute indices ``i`` (query) and ``j``
(key) and, for ``per_document``, their document ids.  Every enabled rule must hold (they are ANDed); ``sinks`` only
relaxes the window::

    causal     j <= i
    window     causal: 0 <= i - j < window        bidirectional: |i - j| < window      (Mistral, Longformer)
    sinks      j < sinks  is visible beyond the window (causality and the document rule still apply)
                                                   (StreamingLLM, arXiv 2309.17453; LM-Infinite, arXiv 2308.16137)
    block      j // block <= i // block   (bidirectional inside a block, causal across blocks)
    per_document  doc[i] == doc[j]        (block-diagonal per document, ids ``[b, n]``)

    causal + window 4 + sinks 2, 8 tokens (LM-Infinite's Lambda shape)     block 3, 8 tokens
        j: 0 1 2 3 4 5 6 7                                                     j: 0 1 2 3 4 5 6 7
    i=0    x . . . . . . .                                                 i=0    x x x . . . . .
    i=1    x x . . . . . .                                                 i=1    x x x . . . . .
    i=2    x x x . . . . .                                                 i=2    x x x . . . . .
    i=3    x x x x . . . .                                                 i=3    x x x x x x . .
    i=4    x x x x x . . .                                                 i=4    x x x x x x . .
    i=5    x x x x x x . .                                                 i=5    x x x x x x . .
    i=6    x x . x x x x .                                                 i=6    x x x x x x x x
    i=7    x x . . x x x x                                                 i=7    x x x x x x x x

Because the rules read absolute indices, one object renders any block of the full ``[n, n]`` mask: a full forward
(queries = keys = ``0..n-1``), a chunk of query rows (``query_start .. query_start + c - 1`` against ``0..nk-1``,
`rows`) and KV-cache decoding (the queries are the last ``nq`` of ``nk`` keys, `for_cache`).  Masks come out as
booleans ``[b|1, 1, nq, nk]`` (True = may attend, `allowed`), as SDPA's additive float form (`additive`), or as a
FlexAttention ``mask_mod`` (`mask_mod`).

No empty rows: every rule lets a token see itself (``i == j`` passes each of them), so whenever a query's own index
is among the keys -- a full forward, a chunk of rows, KV-cache decoding -- each query sees at least one key and no
softmax row is all ``-inf`` (NaN).  Only an arbitrary choice of query and key indices can break this; `check_rows`
finds such rows.  Padding is not a rule of this module: `zoo.nn.Attention` masks padded keys from ``Positions.mask``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["AttentionMask", "check_rows"]


def _check_size(name: str, value, minimum: int, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = f"None or an int >= {minimum}" if optional else f"an int >= {minimum}"
        raise ConfigError(f"AttentionMask: {name} must be {kind}, got {value!r}")


def _check_index(name: str, idx: Tensor) -> None:
    if not isinstance(idx, Tensor) or idx.ndim != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        got = f"{type(idx).__name__}" if not isinstance(idx, Tensor) else f"{idx.dtype} {tuple(idx.shape)}"
        raise ValueError(f"{name} must be a 1-D integer tensor of absolute token indices, got {got}")


@dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may see, as rules over absolute token indices (see the module docstring).

    Args:
        causal: key ``j`` visible from query ``i`` only if ``j <= i``.
        window: sliding window ``>= 1``: ``0 <= i - j < window`` when causal, ``|i - j| < window`` otherwise
            (``window=1`` leaves each token only itself).
        sinks: keys ``j < sinks`` stay visible beyond the window (attention sinks / LM-Infinite's global tokens);
            needs ``window``.  Causality and the document rule still apply to them.
        block: block-causal with blocks of ``block`` tokens: ``j // block <= i // block``.  Not with
            ``causal=True`` (block-causal already orders the blocks; ``block=1`` is plain causal).
        per_document: block-diagonal per document; the render methods then need document ids ``[b, n]`` (ints).

    ``AttentionMask()`` masks nothing (`additive` returns None).
    """

    causal: bool = False
    window: Optional[int] = None
    sinks: int = 0
    block: Optional[int] = None
    per_document: bool = False

    def __post_init__(self):
        for name in ("causal", "per_document"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"AttentionMask: {name} must be a bool, got {getattr(self, name)!r}")
        _check_size("window", self.window, 1, optional=True)
        _check_size("sinks", self.sinks, 0, optional=False)
        _check_size("block", self.block, 1, optional=True)
        if self.sinks and self.window is None:
            raise ConfigError(f"AttentionMask: sinks={self.sinks} needs a window (sinks are the keys visible beyond "
                              f"the window; without one every key is visible already)")
        if self.block is not None and self.causal:
            raise ConfigError(f"AttentionMask: block={self.block} cannot be combined with causal=True: block-causal "
                              f"already orders the blocks (bidirectional inside a block); use block=1 for plain "
                              f"causal")

    @property
    def active(self) -> bool:
        """Whether any rule is enabled (otherwise nothing is ever masked)."""
        return self.causal or self.window is not None or self.block is not None or self.per_document

    # -- the rule, on broadcastable index tensors (shared by `allowed` and `mask_mod`) -------------------------------

    def _rule(self, i: Tensor, j: Tensor) -> Optional[Tensor]:
        """The index rules on broadcastable integer tensors ``i`` (queries) and ``j`` (keys); None = all allowed."""
        ok: Optional[Tensor] = None

        def both(a: Optional[Tensor], b: Tensor) -> Tensor:
            return b if a is None else a & b

        if self.causal:
            ok = both(ok, j <= i)
        if self.window is not None:
            d = i - j
            local = (d >= 0) & (d < self.window) if self.causal else d.abs() < self.window
            if self.sinks:
                local = local | (j < self.sinks)
            ok = both(ok, local)
        if self.block is not None:
            ok = both(ok, torch.div(j, self.block, rounding_mode="floor") <=
                      torch.div(i, self.block, rounding_mode="floor"))
        return ok

    def _docs(self, q_doc: Optional[Tensor], k_doc: Optional[Tensor], nq: int, nk: int) -> Optional[Tensor]:
        """``[b, 1, nq, nk]`` same-document booleans, or None without ``per_document``."""
        if not self.per_document:
            if q_doc is not None or k_doc is not None:
                raise ValueError("document ids were given but this AttentionMask has per_document=False")
            return None
        if q_doc is None or k_doc is None:
            raise ValueError("AttentionMask(per_document=True) needs document ids for the queries and the keys "
                             "(q_doc [b, nq], k_doc [b, nk]; rows/for_cache take docs [b, nk]), got "
                             f"q_doc={'None' if q_doc is None else 'a tensor'}, "
                             f"k_doc={'None' if k_doc is None else 'a tensor'}")
        for name, t, n in (("q_doc", q_doc, nq), ("k_doc", k_doc, nk)):
            if not isinstance(t, Tensor) or t.ndim != 2 or t.shape[1] != n or t.dtype.is_floating_point:
                got = type(t).__name__ if not isinstance(t, Tensor) else f"{t.dtype} {tuple(t.shape)}"
                raise ValueError(f"{name} must be an integer tensor [b, {n}] of document ids, got {got}")
        if q_doc.shape[0] != k_doc.shape[0]:
            raise ValueError(f"q_doc and k_doc must have the same batch size, got {tuple(q_doc.shape)} and "
                             f"{tuple(k_doc.shape)}")
        return (q_doc[:, :, None] == k_doc[:, None, :])[:, None]                # [b, 1, nq, nk]

    # -- renderings -----------------------------------------------------------------------------------------------

    def allowed(self, q_idx: Tensor, k_idx: Tensor, q_doc: Optional[Tensor] = None,
                k_doc: Optional[Tensor] = None) -> Tensor:
        """Booleans ``[b|1, 1, nq, nk]``, True where query ``q_idx[r]`` may see key ``k_idx[c]``.

        ``q_idx`` ``[nq]``, ``k_idx`` ``[nk]``: absolute token indices (integer tensors).  ``q_doc`` ``[b, nq]``,
        ``k_doc`` ``[b, nk]``: document ids (only with ``per_document=True``); the batch dim is 1 without them."""
        _check_index("q_idx", q_idx)
        _check_index("k_idx", k_idx)
        nq, nk = q_idx.shape[0], k_idx.shape[0]
        k_idx = k_idx.to(q_idx.device)
        ok = self._rule(q_idx[:, None], k_idx[None, :])                         # [nq, nk] or None
        same = self._docs(q_doc, k_doc, nq, nk)                                 # [b, 1, nq, nk] or None
        if ok is None:
            ok = torch.ones(nq, nk, dtype=torch.bool, device=q_idx.device)
        ok = ok[None, None]                                                     # [1, 1, nq, nk]
        return ok if same is None else ok & same.to(ok.device)

    def additive(self, q_idx: Tensor, k_idx: Tensor, q_doc: Optional[Tensor] = None, k_doc: Optional[Tensor] = None,
                 dtype: torch.dtype = torch.float32) -> Optional[Tensor]:
        """SDPA's float ``attn_mask`` ``[b|1, 1, nq, nk]``: 0 where allowed, ``finfo(dtype).min`` elsewhere, or None
        when no rule is enabled.  (An enabled rule that happens to mask nothing in this block still gives a tensor:
        deciding that would read the mask back from the device.)"""
        if not self.active:
            _check_index("q_idx", q_idx)
            _check_index("k_idx", k_idx)
            self._docs(q_doc, k_doc, q_idx.shape[0], k_idx.shape[0])            # refuses stray document ids
            return None
        keep = self.allowed(q_idx, k_idx, q_doc, k_doc)
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)

    def rows(self, query_start: int, nq: int, nk: int, docs: Optional[Tensor] = None, device=None,
             additive: Optional[torch.dtype] = None) -> Optional[Tensor]:
        """The rows ``query_start .. query_start + nq - 1`` of the mask of ``nk`` keys ``0..nk-1`` (a chunk of queries,
        `zoo.nn.chunked`).  ``docs`` ``[b, nk]``: document ids of all keys (the queries' ids are its columns
        ``query_start ..``).  Booleans as `allowed`, or with ``additive=dtype`` the float form of `additive`."""
        for name, v in (("query_start", query_start), ("nq", nq), ("nk", nk)):
            _check_size(name, v, 0, optional=False)
        if query_start + nq > nk:
            raise ValueError(f"rows query_start={query_start} .. {query_start + nq - 1} lie beyond the nk={nk} keys")
        if docs is not None and isinstance(docs, Tensor):
            device = docs.device if device is None else device
        q_idx = torch.arange(query_start, query_start + nq, device=device)      # [nq]
        k_idx = torch.arange(nk, device=device)                                 # [nk]
        q_doc = k_doc = None
        if docs is not None:
            if not isinstance(docs, Tensor) or docs.ndim != 2 or docs.shape[1] != nk:
                got = type(docs).__name__ if not isinstance(docs, Tensor) else tuple(docs.shape)
                raise ValueError(f"docs must be the document ids [b, nk={nk}] of all keys, got {got}")
            q_doc, k_doc = docs[:, query_start:query_start + nq], docs
        if additive is not None:
            return self.additive(q_idx, k_idx, q_doc, k_doc, dtype=additive)
        return self.allowed(q_idx, k_idx, q_doc, k_doc)

    def for_cache(self, nq: int, nk: int, docs: Optional[Tensor] = None, device=None,
                  additive: Optional[torch.dtype] = None) -> Optional[Tensor]:
        """KV-cache decoding: the queries are the last ``nq`` of ``nk`` keys (``rows(nk - nq, nq, nk, ...)``)."""
        _check_size("nq", nq, 0, optional=False)
        _check_size("nk", nk, 0, optional=False)
        if nq > nk:
            raise ValueError(f"for_cache: nq={nq} queries cannot be the last of nk={nk} keys")
        return self.rows(nk - nq, nq, nk, docs=docs, device=device, additive=additive)

    def mask_mod(self, docs: Optional[Tensor] = None, query_start: int = 0
                 ) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` with the same rule (pure tensor ops, no
        branching on tensor values), for ``torch.nn.attention.flex_attention.create_block_mask``.

        FlexAttention numbers keys ``0..KV_LEN-1`` and queries ``0..Q_LEN-1``; query row ``q`` is the token
        ``q + query_start`` (a chunk of rows, or ``nk - nq`` for KV-cache decoding).  ``docs`` ``[b, KV_LEN]``:
        document ids of all keys (queries read theirs at ``q + query_start``)."""
        _check_size("query_start", query_start, 0, optional=False)
        if self.per_document:
            if docs is None or not isinstance(docs, Tensor) or docs.ndim != 2 or docs.dtype.is_floating_point:
                got = "None" if docs is None else (f"{docs.dtype} {tuple(docs.shape)}" if isinstance(docs, Tensor)
                                                   else type(docs).__name__)
                raise ValueError(f"AttentionMask(per_document=True).mask_mod needs docs, an integer tensor [b, nk] of "
                                 f"document ids, got {got}")
        elif docs is not None:
            raise ValueError("docs were given but this AttentionMask has per_document=False")
        rule, start = self._rule, query_start

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            i = q_idx + start
            ok = rule(i, kv_idx)
            if ok is None:
                ok = kv_idx >= 0                                                # all True, as a tensor
            if docs is not None:
                ok = ok & (docs[b, i] == docs[b, kv_idx])
            return ok

        return mask_mod


def check_rows(allowed: Tensor) -> None:
    """Raise ValueError if a query row of a boolean mask ``[..., nq, nk]`` sees no key (its softmax would be NaN).

    Reads the mask back (a device sync): meant for tests and debugging, not for every forward."""
    if allowed.dtype != torch.bool:
        raise ValueError(f"check_rows expects the boolean mask of AttentionMask.allowed, got {allowed.dtype}")
    empty = ~allowed.any(dim=-1)                                                # [..., nq]
    if bool(empty.any()):
        where = tuple(int(x) for x in empty.nonzero()[0])
        raise ValueError(f"query row {where[-1]} (index {where} of the mask's leading dims and rows) sees no key: "
                         f"its softmax would be all -inf (NaN); {int(empty.sum())} such rows in all")
