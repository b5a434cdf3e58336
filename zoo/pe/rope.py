"""Rotary position embedding (RoPE): Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding",
arXiv 2104.09864 (Neurocomputing 2024), eq. 34.

Channel pair ``t`` of a query/key at position ``p`` is rotated by the angle ``p * theta_t``,
``theta_t = base^(-2t / r)`` over the ``r`` rotated channels, so ``<R(p) q, R(s) k>`` depends only on ``p - s``.

Two pair layouts exist in checkpoints, and every function here says which one it uses::

    "half"        (x_t, x_{t + r/2})   rotate-half / split-half:  HF transformers (Llama, GPT-NeoX)
    "interleaved" (x_{2t}, x_{2t+1})   rotate-every-two:          RoFormer paper, GPT-J, x-transformers, torchscale

`interleaved_to_half` / `half_to_interleaved` permute q/k projection rows to move a checkpoint between them.

Frequencies and angles are float32 whatever the autocast dtype: in bf16, positions 256 and 257 give the same angle
(HF transformers computes them with autocast disabled for the same reason).

p-RoPE (Barbero et al., "Round and Round We Go! What makes Rotary Positional Encodings useful?", ICLR 2025,
arXiv 2410.06205): drop the *lowest* frequencies, keep the fraction ``p`` of the highest ones unchanged; the
dropped pairs get frequency 0, i.e. are not rotated, and act as position-free (semantic) channels. Our reading of the
paper's ``apply_p_rope`` listing: ``rope_angles = int(p * head_dim // 2)`` rotated pairs, the remaining
``nope_angles`` unrotated; HF transformers' "proportional" rope type computes the same frequencies and
`p_rope_inv_freq` is tested against it. Unlike partial rotary (``rot_dim``, GPT-NeoX), the kept frequencies are *not*
respread over the rotated channels.
"""
from __future__ import annotations

from typing import Dict, Hashable, Optional, Tuple

import torch
from torch import Tensor

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe

__all__ = ["rope_inv_freq", "p_rope_inv_freq", "rope_angles", "apply_rotary", "interleaved_to_half",
           "half_to_interleaved", "RoPE"]

LAYOUTS = ("half", "interleaved")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def rope_inv_freq(dim: int, base: float = 10000.0, device=None) -> Tensor:
    """``1 / base^(arange(0, dim, 2) / dim)``: the ``dim // 2`` rotation frequencies, float32.  ``[dim/2]``"""
    if not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even int, got {dim!r}")
    if base <= 0:
        raise ValueError(f"base must be positive, got {base}")
    # float64 power then float32, so the frequencies are bitwise the same on every device
    exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim
    return (1.0 / (float(base) ** exponent)).to(torch.float32)


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p (the fraction of rotary frequencies p-RoPE keeps) must be a number in [0, 1], got {p!r}")
    return float(p)


def p_rope_inv_freq(inv_freq: Tensor, p: float) -> Tensor:
    """p-RoPE (Barbero et al., 2024): keep the first ``int(p * r // 2)`` frequencies, zero the rest.  ``[r/2]``

    The frequencies are ordered highest first (pair ``t`` has ``base^(-2t/r)``), so the zeroed pairs are the
    lowest-frequency ones: they are left unrotated, their q.k is position-independent. ``p = 1`` is RoPE, ``p = 0``
    NoPE. The count ``int(p * r // 2)`` follows the paper's listing (and HF's "proportional" rope type).
    """
    p = _check_p(p)
    if not isinstance(inv_freq, Tensor) or inv_freq.ndim != 1:
        raise ValueError(f"inv_freq must be a 1-D Tensor [r/2], got {type(inv_freq).__name__} "
                         f"{tuple(inv_freq.shape) if isinstance(inv_freq, Tensor) else ''}")
    keep = int(p * (2 * inv_freq.shape[0]) // 2)
    if keep == inv_freq.shape[0]:
        return inv_freq
    out = inv_freq.clone()
    out[keep:] = 0.0
    return out


def rope_angles(positions: Tensor, inv_freq: Tensor) -> Tensor:
    """Rotation angles ``positions[..., None] * inv_freq``, always float32 (autocast disabled locally).

    Args:
        positions: ``[...]`` int or float positions.
        inv_freq: ``[r/2]`` frequencies.

    Returns:
        ``[..., r/2]`` float32.
    """
    if not isinstance(positions, Tensor) or not isinstance(inv_freq, Tensor):
        raise ValueError("positions and inv_freq must be Tensors")
    if inv_freq.ndim != 1:
        raise ValueError(f"inv_freq must be 1-D [r/2], got shape {tuple(inv_freq.shape)}")
    with no_autocast(positions.device):
        return positions.to(torch.float32)[..., None] * inv_freq.to(device=positions.device, dtype=torch.float32)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, layout: str = "half", rot_dim: Optional[int] = None) -> Tensor:
    """Rotate the first ``r`` channels of ``x`` by the angles whose cos/sin are given; the rest pass through.

    Args:
        x: ``[..., n, d]``.
        cos, sin: ``[..., n, r/2]`` (one value per pair, broadcastable against x), e.g. ``rope_angles(...).cos()``.
        layout: ``"half"`` pairs ``(x_t, x_{t+r/2})``; ``"interleaved"`` pairs ``(x_{2t}, x_{2t+1})``.
        rot_dim: ``r``; defaults to ``2 * cos.shape[-1]`` (partial rotary when ``r < d``).

    Returns:
        ``[..., n, d]`` in ``x.dtype`` (the rotation itself runs in float32).
    """
    _check_layout(layout)
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    half = cos.shape[-1]
    r = 2 * half if rot_dim is None else rot_dim
    if r != 2 * half:
        raise ValueError(f"rot_dim={rot_dim} needs cos/sin with {rot_dim // 2} pairs in the last dim, got {half}")
    if r <= 0 or r > x.shape[-1]:
        raise ValueError(f"rot_dim {r} must be in 2..{x.shape[-1]} (the head dim)")
    if not (cos.requires_grad or sin.requires_grad) and torch.is_grad_enabled() and x.requires_grad:
        # fixed angles (every RoPE here): a hand-written backward (the inverse rotation) instead of autograd
        # through slices, products and cat, which costs twice the memory passes
        return _FixedRotation.apply(x, cos, sin, layout)
    return _rotate(x, cos, sin, layout)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, layout: str) -> Tensor:
    """The rotation itself (float32, or float64 for float64 input); channels past ``2 * cos.shape[-1]`` pass."""
    half = cos.shape[-1]
    r = 2 * half
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    xr, tail = x[..., :r].to(real), x[..., r:]
    cos, sin = cos.to(real), sin.to(real)
    if layout == "half":
        x1, x2 = xr[..., :half], xr[..., half:]                                  # [..., n, r/2] each
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)     # [..., n, r]
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]                                    # [..., n, r/2] each
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)   # [..., n, r/2, 2]
        out = out.flatten(-2)                                                    # [..., n, r]
    out = out.to(x.dtype)
    if not tail.shape[-1]:
        return out
    return torch.cat([out, tail.expand(*out.shape[:-1], tail.shape[-1])], dim=-1)  # angles may broadcast x


class _FixedRotation(torch.autograd.Function):
    """`apply_rotary` with angles that need no gradient: the backward is the rotation by the opposite angles."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, layout: str) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.layout, ctx.x_shape = layout, x.shape
        return _rotate(x, cos, sin, layout)

    @staticmethod
    def backward(ctx, g: Tensor):
        cos, sin = ctx.saved_tensors
        dx = _rotate(g, cos, -sin, ctx.layout)
        return (dx if dx.shape == ctx.x_shape else dx.sum_to_size(ctx.x_shape)), None, None, None


def _pair_permutation(rot_dim: int, to_half: bool, device=None) -> Tensor:
    half = rot_dim // 2
    if to_half:
        # new row t = old 2t, new row t + r/2 = old 2t+1
        return torch.cat([torch.arange(0, rot_dim, 2, device=device), torch.arange(1, rot_dim, 2, device=device)])
    # new row 2t = old t, new row 2t+1 = old t + r/2
    a = torch.arange(half, device=device)
    return torch.stack([a, a + half], dim=-1).flatten()


def _permute_rows(w: Tensor, head_dim: int, rot_dim: Optional[int], to_half: bool) -> Tensor:
    r = head_dim if rot_dim is None else rot_dim
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
    if r <= 0 or r % 2 or r > head_dim:
        raise ValueError(f"rot_dim must be even and in 2..head_dim={head_dim}, got {r}")
    if w.ndim < 1 or w.shape[0] % head_dim:
        raise ValueError(f"w must have num_heads * head_dim rows (head_dim={head_dim}), got shape {tuple(w.shape)}")
    perm = torch.cat([_pair_permutation(r, to_half, w.device), torch.arange(r, head_dim, device=w.device)])
    heads = w.shape[0] // head_dim
    w = w.reshape(heads, head_dim, *w.shape[1:])                                 # [h, d, ...]
    return w[:, perm].reshape(heads * head_dim, *w.shape[2:])                    # [h*d, ...]


def interleaved_to_half(w: Tensor, head_dim: int, rot_dim: Optional[int] = None) -> Tensor:
    """Permute q or k projection rows (weight ``[h*d, in]`` or bias ``[h*d]``) from interleaved to half layout.

    A model whose rotary pairs are ``(2t, 2t+1)`` gives identical attention scores after this permutation when run
    with rotate-half pairs ``(t, t + r/2)`` (the permutation HF applies when converting Meta's Llama weights).
    Channels beyond ``rot_dim`` (partial rotary) stay in place.
    """
    return _permute_rows(w, head_dim, rot_dim, to_half=True)


def half_to_interleaved(w: Tensor, head_dim: int, rot_dim: Optional[int] = None) -> Tensor:
    """Inverse of `interleaved_to_half`: rows from rotate-half layout to interleaved pairs."""
    return _permute_rows(w, head_dim, rot_dim, to_half=False)


def check_rotary_qk(q: Tensor, k: Tensor, head_dim: int, by: str) -> Tuple[int, int]:
    """``(nq, nk)`` of q ``[b, h, nq, d]``, k ``[b, h, nk, d]``; raises unless ``d == head_dim`` (``by`` names the
    encoding) and the queries can be the last ``nq`` keys."""
    if q.shape[-1] != head_dim or k.shape[-1] != head_dim:
        raise ValueError(f"q/k head dim {q.shape[-1]}/{k.shape[-1]} does not match {by} head_dim={head_dim}")
    nq, nk = q.shape[-2], k.shape[-2]
    if nq > nk:
        raise ValueError(f"q has {nq} positions but k only {nk}: queries must be the last nq of the keys")
    return nq, nk


def check_key_ids(ids: Tensor, nq: int, nk: int) -> None:
    """Raise unless ``pos.ids`` is ``[b, nk]`` or ``[nk]``: one id per key (the queries take the last ``nq``)."""
    if ids.shape[-1] != nk:
        raise ValueError(f"pos.ids has {ids.shape[-1]} positions but k has {nk} (ids describe the keys; "
                         f"queries take the last {nq})")
    if ids.ndim not in (1, 2):
        raise ValueError(f"pos.ids must be [b, n] or [n], got shape {tuple(ids.shape)}")


@register_pe("rope", positions="1d", paper="Su et al., RoFormer: Enhanced Transformer with Rotary Position "
             "Embedding, arXiv:2104.09864", causal_ok=True, relative=True)
@register_pe("p_rope", positions="1d", paper="Barbero et al., Round and Round We Go! What makes Rotary Positional "
             "Encodings useful?, ICLR 2025, arXiv:2410.06205", causal_ok=True, relative=True, example={"p": 0.75})
class RoPE(PositionalEncoding):
    """Rotary position embedding (Su et al., RoFormer, 2021) on the ``rotate`` hook.

    Args:
        head_dim: ``d`` of q/k.
        base: frequency base (10000 in the paper).
        layout: ``"half"`` (HF) or ``"interleaved"`` (paper, GPT-J, x-transformers); see the module docstring.
        rot_dim: rotate only the first ``rot_dim`` channels (partial rotary, e.g. GPT-NeoX); default ``head_dim``.
        p: p-RoPE fraction of frequencies kept (Barbero et al., 2024): the lowest ``1 - p`` of the pairs get frequency
            0 (not rotated). ``1.0`` (default) is plain RoPE, ``0.0`` is NoPE.

    ``rotate(q, k, pos)``, q ``[b, h, nq, d]``, k ``[b, h, nk, d]``: positions are ``pos.ids`` (``[b, nk]`` or
    ``[nk]``, floats allowed, e.g. V2PE) or ``0..nk-1``; when ``nk > nq`` (KV cache) the queries are the last ``nq``.
    cos/sin for ``0..n-1`` are cached per device (float32), sliced for shorter sequences.

    Subclasses with other frequencies (`zoo.pe.rope_scaling.ScaledRoPE`) override `_compute_frequencies` and, when
    the frequencies depend on the sequence length, `frequency_key`; every cache here is keyed by that key.
    """

    length_dependent = False          # True when the frequencies depend on the sequence length (dynamic NTK, LongRoPE)

    def __init__(self, head_dim: int, base: float = 10000.0, layout: str = "half", rot_dim: Optional[int] = None,
                 p: float = 1.0):
        super().__init__()
        _check_layout(layout)
        if not isinstance(head_dim, int) or head_dim <= 0:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        r = head_dim if rot_dim is None else rot_dim
        if not isinstance(r, int) or r <= 0 or r % 2 or r > head_dim:
            raise ValueError(f"rot_dim must be an even int in 2..head_dim={head_dim}, got {rot_dim!r}")
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 0:
            raise ValueError(f"base must be a positive number, got {base!r}")
        self.head_dim, self.rot_dim, self.base, self.layout = head_dim, r, float(base), layout
        self.p = _check_p(p)
        # plain attributes, not buffers: module.half() must not cast the frequencies
        self._freqs: Dict[Tuple[torch.device, Hashable], Tuple[Tensor, float]] = {}
        self._cos_sin: Dict[Tuple[torch.device, Hashable], Tuple[Tensor, Tensor]] = {}

    def extra_repr(self) -> str:
        s = f"head_dim={self.head_dim}, rot_dim={self.rot_dim}, base={self.base:g}, layout={self.layout!r}"
        return s + (f", p={self.p:g}" if self.p != 1.0 else "")

    # ---- frequencies ---------------------------------------------------------------------------------------------
    def _compute_frequencies(self, key: Hashable) -> Tuple[Tensor, float]:
        """``(inv_freq [r/2] float32 on CPU, attention_factor)`` for frequency set ``key``, before p-RoPE."""
        return rope_inv_freq(self.rot_dim, self.base), 1.0

    def frequency_key(self, seq_len: Optional[float]) -> Hashable:
        """Which frequency set a sequence of length ``seq_len`` (= max position + 1) uses; None = the fixed one."""
        return None

    @staticmethod
    def _store(cache: dict, device: torch.device, key: Hashable, value):
        # keep the fixed set (key None) and at most one length-dependent set per device: decoding with dynamic NTK
        # makes a new set at every step, and old ones are never needed again
        if key is not None:
            for old in [k for k in cache if k[0] == device and k[1] is not None]:
                del cache[old]
        cache[(device, key)] = value
        return value

    def frequencies(self, device=None, seq_len: Optional[float] = None) -> Tuple[Tensor, float]:
        """``(inv_freq [r/2] float32, attention_factor)`` used for a sequence of length ``seq_len`` (p-RoPE applied)."""
        device = torch.device("cpu" if device is None else device)
        key = self.frequency_key(seq_len)
        hit = self._freqs.get((device, key))
        if hit is None:
            inv, factor = self._compute_frequencies(key)
            hit = self._store(self._freqs, device, key, (p_rope_inv_freq(inv, self.p).to(device), float(factor)))
        return hit

    def inv_freq(self, device=None, seq_len: Optional[float] = None) -> Tensor:
        return self.frequencies(device, seq_len)[0]

    def cos_sin(self, positions: Tensor, seq_len: Optional[float] = None) -> Tuple[Tensor, Tensor]:
        """float32 cos, sin at ``positions`` ``[...]`` -> ``[..., r/2]`` each, times the attention factor (as HF does:
        scaled RoPE multiplies both q and k, so logits scale by its square)."""
        inv, factor = self.frequencies(positions.device, seq_len)
        with no_autocast(positions.device):
            ang = rope_angles(positions, inv)
            cos, sin = ang.cos(), ang.sin()
            if factor != 1.0:
                cos, sin = cos * factor, sin * factor
        return cos, sin

    def cos_sin_range(self, n: int, device, seq_len: Optional[float] = None) -> Tuple[Tensor, Tensor]:
        """Cached float32 cos, sin for positions ``0..n-1``: ``[n, r/2]`` each (``seq_len`` defaults to ``n``)."""
        device = torch.device(device)
        key = self.frequency_key(n if seq_len is None else seq_len)
        hit = self._cos_sin.get((device, key))
        # an inference-mode tensor cannot be saved for backward, so it is not reused outside inference mode
        if hit is None or hit[0].shape[0] < n or (hit[0].is_inference() and not torch.is_inference_mode_enabled()):
            hit = self._store(self._cos_sin, device, key,
                              self.cos_sin(torch.arange(n, device=device), n if seq_len is None else seq_len))
        return hit[0][:n], hit[1][:n]

    # ---- the hook ------------------------------------------------------------------------------------------------
    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        # q [b, h, nq, d], k [b, h, nk, d]
        nq, nk = check_rotary_qk(q, k, self.head_dim, "RoPE")
        ids = pos.ids if pos is not None else None
        if ids is None:
            cos, sin = self.cos_sin_range(nk, k.device)                          # [nk, r/2]
        else:
            check_key_ids(ids, nq, nk)
            if ids.ndim == 2 and ids.shape[0] > 1 and ids.stride(0) == 0:
                ids = ids[0]                                                     # expanded batch: one table
            # HF's rule for length-dependent frequencies: seq_len = max(position_ids) + 1 over the whole batch
            seq_len = float(ids.max()) + 1.0 if self.length_dependent and ids.numel() else None
            cos, sin = self.cos_sin(ids.to(k.device), seq_len)                   # [nk, r/2] or [b, nk, r/2]
            if cos.ndim == 3:
                cos, sin = cos[:, None], sin[:, None]                            # [b, 1, nk, r/2]
        k = apply_rotary(k, cos, sin, self.layout)
        q = apply_rotary(q, cos[..., nk - nq:, :], sin[..., nk - nq:, :], self.layout)
        return q, k
