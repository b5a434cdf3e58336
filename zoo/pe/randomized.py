"""Randomized positional encodings: Ruoss, Delétang, Genewein et al., "Randomized Positional Encodings Boost
Length Generalization of Transformers", ACL 2023 (official code: google-deepmind/randomized_positional_encodings,
JAX/Haiku).

Instead of positions ``0..n-1`` a sequence gets a sorted random subset of a longer range ``[0, max_length)``::

    ids = sort(random subset of size n of arange(max_length))       one draw per call, shared by the batch

so that at test time longer sequences use positions the model has already seen.  The official code draws at
training *and* evaluation time (the encoding is the same distribution in both); so do we.  Any encoding of
positions can then be fed with these ids (the official code does it for sin/cos, RoPE, ALiBi, learned tables).

Two ways to use it:

* `randomized_positions` is a positions producer: draw once per forward in the model / data pipeline and put the
  ids in ``Positions.ids``; every layer (and a KV cache: draw for the longest length once, then slice) sees the
  same positions.  This is the recommended path.
* `RandomizedPE` wraps another encoding (RoPE, sin/cos, ALiBi, ...) and replaces its positions in each hook call.
  Calls that receive the *same* ``Positions`` object reuse one draw (all layers of one forward, when the model
  passes one ``Positions`` down), any other call draws anew (including ``pos=None``).  It maps token indices
  (``pos.ids``, or ``0..n-1``) through the drawn strictly increasing map ``[0, m) -> [0, max_length)``.  PEs that
  read attention weights are not supported (their bias and value hooks would need one shared draw).
"""
from __future__ import annotations

import weakref
from dataclasses import replace
from typing import Any, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from ..positions import Positions
from .base import PositionalEncoding
from .registry import register_pe

__all__ = ["randomized_positions", "randomize_ids", "RandomizedPE"]


def _check_int(value, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return value


def randomized_positions(n: int, max_length: int, generator: Optional[torch.Generator] = None,
                         device=None) -> Tensor:
    """A sorted uniformly random subset of ``[0, max_length)`` of size ``n``: long ``[n]``, strictly increasing.

    Args:
        n: number of positions (``<= max_length``).
        max_length: the range (the paper's ``noise_max_length``, e.g. 2048).
        generator: a ``torch.Generator`` for reproducible draws (the draw is made on its device).
        device: where the result goes (default: the generator's device, else the CPU).
    """
    _check_int(n, "n", 0)
    _check_int(max_length, "max_length", 1)
    if n > max_length:
        raise ValueError(f"n={n} positions cannot be drawn without replacement from max_length={max_length}")
    gen_device = generator.device if generator is not None else (device if device is not None else "cpu")
    ids = torch.randperm(max_length, generator=generator, device=gen_device)[:n].sort().values
    return ids if device is None else ids.to(device)


def randomize_ids(ids: Optional[Tensor], n: int, max_length: int, generator: Optional[torch.Generator] = None,
                  device=None) -> Tensor:
    """Map token indices ``ids`` (``[b, n]``/``[n]`` non-negative ints; None = ``0..n-1``) through one random
    strictly increasing map ``[0, max(ids) + 1) -> [0, max_length)``.  ``0..n-1`` gives `randomized_positions`."""
    if ids is None:
        return randomized_positions(n, max_length, generator, device)
    if ids.is_floating_point():
        if not torch.equal(ids, ids.round()):
            raise ValueError("randomize_ids: pos.ids must be integer token indices to be randomized")
        ids = ids.long()
    if ids.numel() == 0:
        return ids.to(device)
    if ids.ndim == 2 and ids.shape[0] > 1 and ids.stride(0) == 0:
        # an expanded batch (Positions.sequence): map one row, keep it expanded so that biases stay [1, ...]
        return randomize_ids(ids[0], n, max_length, generator, device).expand(ids.shape)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0:
        raise ValueError(f"randomize_ids: pos.ids must be >= 0, got a minimum of {lo}")
    if hi >= max_length:
        raise ValueError(f"randomize_ids: pos.ids reach {hi} but max_length={max_length}")
    table = randomized_positions(hi + 1, max_length, generator)
    return table.to(ids.device)[ids].to(device if device is not None else ids.device)


class RandomizedPE(PositionalEncoding):
    """Feed another encoding with randomized positions (see the module docstring for when a draw is shared).

    Args:
        pe: the wrapped `PositionalEncoding` (must not read attention weights).
        max_length: range of the random positions (``noise_max_length``).
        generator: optional ``torch.Generator`` for reproducible draws.

    ``has_embed`` / ``has_rotate`` / ``has_bias`` report the wrapped encoding's hooks, so the attention takes the
    same path as for ``pe`` itself.
    """

    def __init__(self, pe: PositionalEncoding, max_length: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        if not isinstance(pe, PositionalEncoding):
            raise ValueError(f"pe must be a PositionalEncoding, got {type(pe).__name__}")
        if pe.needs_weights:
            raise ValueError(f"pe {type(pe).__name__} reads the attention weights (value hook); RandomizedPE "
                             f"supports embed/rotate/bias encodings only - pass randomized_positions() in "
                             f"Positions.ids instead")
        self.pe = pe
        self.max_length = _check_int(max_length, "max_length", 1)
        self.generator = generator
        self._last: Optional[Tuple[weakref.ref, int, Tensor]] = None

    def extra_repr(self) -> str:
        return f"max_length={self.max_length}"

    @property
    def has_embed(self) -> bool:
        return self.pe.has_embed

    @property
    def has_rotate(self) -> bool:
        return self.pe.has_rotate

    @property
    def has_bias(self) -> bool:
        return self.pe.has_bias

    @property
    def needs_weights(self) -> bool:
        return False

    def positions(self, pos: Optional[Positions], n: int, device) -> Positions:
        """``pos`` with ``ids`` replaced by randomized ones (reusing the draw made for the same ``pos`` object)."""
        if pos is not None and self._last is not None:
            ref, last_n, ids = self._last
            if ref() is pos and last_n == n:
                return replace(pos, ids=ids)
        base = pos.ids if pos is not None else None
        if base is not None and base.shape[-1] != n:
            raise ValueError(f"RandomizedPE: pos.ids has {base.shape[-1]} positions but the hook sees {n}")
        ids = randomize_ids(base, n, self.max_length, self.generator, device)
        if pos is None:
            return Positions(ids=ids)
        self._last = (weakref.ref(pos), n, ids)
        return replace(pos, ids=ids)

    def embed(self, x: Tensor, pos: Optional[Positions]) -> Tensor:
        return self.pe.embed(x, self.positions(pos, x.shape[-2], x.device))

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        return self.pe.rotate(q, k, self.positions(pos, k.shape[-2], k.device))

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Optional[Tensor]:
        return self.pe.bias(q, k, self.positions(pos, k.shape[-2], k.device), scale)


@register_pe("randomized", positions="1d", paper="Ruoss et al., Randomized Positional Encodings Boost Length "
             "Generalization of Transformers, ACL 2023, arXiv:2305.16843", builds=RandomizedPE,
             example=lambda g: {"max_length": 4 * (g["max_len"] or 16)})
def randomized(max_length: int, pe: Union[str, Mapping[str, Any], PositionalEncoding] = "rope",
               generator: Optional[torch.Generator] = None, *, dim: Optional[int] = None,
               head_dim: Optional[int] = None, num_heads: Optional[int] = None, causal: Optional[bool] = None,
               max_len: Optional[int] = None, depth: Optional[int] = None,
               grid_size: Optional[Tuple[int, int]] = None) -> RandomizedPE:
    """`RandomizedPE` around ``pe``: an encoding, or a spec (``"rope"``, ``{"name": "alibi"}``) built with the same
    geometry (`zoo.pe.build`); the official code wraps sin/cos, RoPE, ALiBi and learned tables (RoPE by default
    here).  ``max_length``: the range of the random positions, several times the training length."""
    if not isinstance(pe, PositionalEncoding):
        from .registry import build
        pe = build(pe, dim=dim, head_dim=head_dim, num_heads=num_heads, causal=causal, max_len=max_len, depth=depth,
                   grid_size=grid_size)
    return RandomizedPE(pe, max_length, generator)
