"""KV caches of the decoders' attention layers: `KVCache` (every key seen) and `StreamingKVCache` (attention sinks
plus a window, StreamingLLM).  `zoo.nn.Attention` reads and extends them; they hold tensors only."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["KVCache", "StreamingKVCache"]


class KVCache:
    """Keys and values of the tokens one attention layer has already seen: ``k``, ``v`` ``[b, h, n_past, d]``.

    Keys are stored *after* the encoding's rotation, so a cached key is never rotated again.  ``append`` returns
    the concatenation (a new tensor each step: autograd through cached decoding stays valid).  One cache per layer;
    a model's cache is a list of them (``CodeLM.make_cache``).
    """

    def __init__(self):
        self.k: Optional[Tensor] = None
        self.v: Optional[Tensor] = None

    @property
    def length(self) -> int:
        """Number of cached tokens."""
        return 0 if self.k is None else self.k.shape[-2]

    def __len__(self) -> int:
        return self.length

    def append(self, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """Add the new ``k``, ``v`` ``[b, h, n_new, d]``; returns all keys and values ``[b, h, n_past + n_new, d]``."""
        if k.shape != v.shape or k.ndim != 4:
            raise ValueError(f"k and v must both be [b, h, n, d], got {tuple(k.shape)} and {tuple(v.shape)}")
        if self.k is not None:
            if self.k.shape[:2] != k.shape[:2] or self.k.shape[-1] != k.shape[-1]:
                raise ValueError(f"the cache holds keys {tuple(self.k.shape)} [b, h, n, d] but the new keys are "
                                 f"{tuple(k.shape)}: batch, heads and head dim must match")
            k, v = torch.cat([self.k, k.to(self.k.dtype)], dim=-2), torch.cat([self.v, v.to(self.v.dtype)], dim=-2)
        self.k, self.v = k, v
        return k, v

    def reset(self) -> None:
        self.k = self.v = None

    @property
    def size(self) -> int:
        """Number of keys held (== `length`; a `StreamingKVCache` holds fewer than it has seen)."""
        return self.length

    def __repr__(self) -> str:
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(length={self.length}, k={shape})"


class StreamingKVCache(KVCache):
    """A bounded KV cache for endless decoding (StreamingLLM, Xiao et al., "Efficient Streaming Language Models with
    Attention Sinks", ICLR 2024, arXiv 2309.17453): after every step only the first ``sinks`` tokens and the last
    ``window`` tokens stay, so memory stays flat however long the generation runs.

    ``length`` counts every token seen (what positions describe); ``size`` the keys held; ``kept`` their absolute
    token indices ``[size]``.  Keys are held *un-rotated*: a rotary encoding turns them at their index in the cache
    (``0 .. size - 1``, the new queries last), as the official code does, so distances never exceed the cache; a
    position-only bias (ALiBi, T5, KERPLE, FIRE) sees the kept tokens at their own positions.  While nothing has been
    evicted (``length <= sinks + window``) this is exactly the full cache.
    """

    def __init__(self, window: int, sinks: int = 4):
        super().__init__()
        for name, v, low in (("window", window, 1), ("sinks", sinks, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"StreamingKVCache: {name} must be an int >= {low}, got {v!r}")
        self.window, self.sinks = window, sinks
        self.seen = 0
        self.kept: Optional[Tensor] = None                                       # [size] absolute indices

    @property
    def length(self) -> int:
        return self.seen

    @property
    def size(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def add(self, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Hold the new un-rotated ``k``, ``v`` ``[b, h, n_new, d]``; returns the held keys and values plus the new
        ones and their absolute indices (``[size + n_new]``).  Call `evict` after the attention."""
        n = k.shape[-2]
        idx = torch.arange(self.seen, self.seen + n, device=k.device)
        if self.k is not None:
            if self.k.shape[:2] != k.shape[:2] or self.k.shape[-1] != k.shape[-1]:
                raise ValueError(f"the cache holds keys {tuple(self.k.shape)} [b, h, n, d] but the new keys are "
                                 f"{tuple(k.shape)}: batch, heads and head dim must match")
            k, v = torch.cat([self.k, k.to(self.k.dtype)], dim=-2), torch.cat([self.v, v.to(self.v.dtype)], dim=-2)
            idx = torch.cat([self.kept.to(idx.device), idx])
        self.k, self.v, self.kept = k, v, idx
        self.seen += n
        return k, v, idx

    def evict(self) -> None:
        """Keep the first ``sinks`` and the last ``window`` held tokens."""
        size = self.size
        if size <= self.sinks + self.window:
            return
        keep = torch.cat([torch.arange(self.sinks), torch.arange(size - self.window, size)]).to(self.k.device)
        self.k, self.v = self.k.index_select(-2, keep), self.v.index_select(-2, keep)
        self.kept = self.kept.index_select(0, keep.to(self.kept.device))

    def reset(self) -> None:
        super().reset()
        self.seen, self.kept = 0, None

    def __repr__(self) -> str:
        return f"StreamingKVCache(sinks={self.sinks}, window={self.window}, seen={self.seen}, size={self.size})"
