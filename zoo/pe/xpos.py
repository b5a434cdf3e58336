"""xPos: Sun et al., "A Length-Extrapolatable Transformer", ACL 2023, arXiv 2212.10554 (eq. 7-8).

RoPE whose rotation also scales: pair ``t`` of a query at position ``n`` is multiplied by ``zeta_t^(n / scale_base)``
and of a key by ``zeta_t^(-n / scale_base)``, ``zeta_t = (2t + 0.4 d) / (1.4 d)`` (< 1), so the score of query ``i`` and
key ``j`` carries ``zeta_t^((i - j) / scale_base)``: it still depends only on ``i - j`` and decays with distance for
``i > j`` (causal attention).

Checked against microsoft/torchscale @4d1e0e8, ``torchscale/component/xpos_relative_position.py::XPOS``:
interleaved pairs (``rotate_every_two``), ``theta_t = 10000^(-2t/d)``, the exponent centred on the key sequence
(``n = j - ceil(nk / 2)``; queries of an incremental step use the same centring through ``offset``), keys downscaled.
The centre cancels in q.k (only ``i - j`` remains) but keeps ``zeta^n`` inside float32 range for longer sequences.
x-transformers' ``RotaryEmbedding(use_xpos=True)`` centres differently (``t - max_pos // 2``); same scores.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe
from .rope import _check_layout, apply_rotary, check_key_ids, check_rotary_qk, rope_angles, rope_inv_freq

__all__ = ["xpos_zeta", "xpos_scale", "XPos"]


def xpos_zeta(head_dim: int, device=None) -> Tensor:
    """``zeta_t = (2t + 0.4 d) / (1.4 d)`` for the ``d/2`` pairs, float32.  ``[d/2]``"""
    if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even int, got {head_dim!r}")
    t2 = torch.arange(0, head_dim, 2, dtype=torch.float64)
    return ((t2 + 0.4 * head_dim) / (1.4 * head_dim)).to(device=device, dtype=torch.float32)


def xpos_scale(positions: Tensor, zeta: Tensor, scale_base: float, center=0.0) -> Tensor:
    """``zeta^((positions - center) / scale_base)``, float32 (autocast off).  ``[...] -> [..., d/2]``"""
    with no_autocast(positions.device):
        power = (positions.to(torch.float32) - center) / scale_base                    # [...]
        return torch.exp(power[..., None] * torch.log(zeta.to(positions.device, torch.float32)))


@register_pe("xpos", positions="1d", paper="Sun et al., A Length-Extrapolatable Transformer, ACL 2023, "
             "arXiv:2212.10554", causal_ok=True, relative=True)
class XPos(PositionalEncoding):
    """xPos (Sun et al., 2022) on the ``rotate`` hook: RoPE plus a per-pair exponential scale, q up, k down.

    Args:
        head_dim: ``d`` of q/k (all channels rotate).
        base: RoPE frequency base (10000 in the paper and torchscale).
        scale_base: ``gamma`` in the paper's ``zeta^(n / gamma)``; 512 in torchscale and x-transformers.
        layout: ``"interleaved"`` (torchscale, x-transformers) or ``"half"``.

    ``rotate(q, k, pos)``, q ``[b, h, nq, d]``, k ``[b, h, nk, d]``: positions are ``pos.ids`` or ``0..nk-1``; with a
    KV cache (``nk > nq``) the queries are the last ``nq`` keys, and the centre is taken from the keys
    (``ceil((min + max + 1) / 2)``, torchscale's ``ceil(nk / 2)`` for ``0..nk-1``) so q and k share it.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, scale_base: float = 512.0, layout: str = "interleaved"):
        super().__init__()
        _check_layout(layout)
        if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
            raise ValueError(f"head_dim must be a positive even int, got {head_dim!r}")
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 0:
            raise ValueError(f"base must be a positive number, got {base!r}")
        if isinstance(scale_base, bool) or not isinstance(scale_base, (int, float)) or not scale_base > 0:
            raise ValueError(f"scale_base must be a positive number (512 in the paper), got {scale_base!r}")
        self.head_dim, self.base, self.scale_base, self.layout = head_dim, float(base), float(scale_base), layout

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base:g}, scale_base={self.scale_base:g}, layout={self.layout!r}"

    def cos_sin_scale(self, positions: Tensor, center) -> Tuple[Tensor, Tensor, Tensor]:
        """float32 cos, sin and the query scale at ``positions`` ``[...]`` -> ``[..., d/2]`` each."""
        device = positions.device
        ang = rope_angles(positions, rope_inv_freq(self.head_dim, self.base).to(device))   # float64 math on CPU
        scale = xpos_scale(positions, xpos_zeta(self.head_dim, device), self.scale_base, center)
        return ang.cos(), ang.sin(), scale

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        # q [b, h, nq, d], k [b, h, nk, d]
        nq, nk = check_rotary_qk(q, k, self.head_dim, "XPos")
        ids = pos.ids if pos is not None else None
        if ids is None:
            ids = torch.arange(nk, device=k.device)
            center = float((nk + 1) // 2)                                # torchscale: -(-nk // 2)
        else:
            check_key_ids(ids, nq, nk)
            if nk == 0:                                                  # no tokens: nothing to rotate
                return q, k
            ids = ids.to(k.device)
            with no_autocast(k.device):
                center = torch.ceil((ids.min().float() + ids.max().float() + 1) / 2)   # a tensor: no host sync
        cos, sin, scale = self.cos_sin_scale(ids, center)                 # [nk, d/2] or [b, nk, d/2]
        if cos.ndim == 3:
            cos, sin, scale = cos[:, None], sin[:, None], scale[:, None]  # [b, 1, nk, d/2]
        k = apply_rotary(k, cos / scale, sin / scale, self.layout)
        cq, sq, s = cos[..., nk - nq:, :], sin[..., nk - nq:, :], scale[..., nk - nq:, :]
        q = apply_rotary(q, cq * s, sq * s, self.layout)
        return q, k
