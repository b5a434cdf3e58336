"""Linear attention, LightNet form: the second attention kind, cost O(n d²), never an [n, n] matrix.

LightNet (Qin et al., arXiv 2405.21022) replaces the multiplicative decay of linear RNNs by an *additive* recurrence:
keys are normalised by a running log-sum-exp over the tokens, ``k̃_{s,t} = exp(k_s − z_t)``,
``z_t = logsumexp_{r≤t} k_r`` (per channel), so the state is ``S_t = Σ_{s≤t} k̃_{s,t} v_sᵀ``. With every token
visible (vision) the final state does not depend on the scan order: ``k̃ = softmax over the tokens`` — one scan for
any number of dimensions. The token mixer, as in xmixers ``LightNetAttention`` (Doraemonzzz/xmixers; the official
LightNet code is not public)::

    x [b, n, c] --qkv--> q, k, v [b, h, n, d]
    q = SiLU(q)                                   query feature map
    k = softmax_n(k)    (causal: exp(k_s − z_t))  additive recurrence, padded keys weigh 0
    q, k = pe.rotate(q, k, pos)                   e.g. MD-LRPE cosine: [b, h, n, 2d]
    kv  = kᵀ v          [b, h, d', d]             non-causal: one product over all tokens
    out = q kv          [b, h, n, d]              causal: chunked cumulative form, [chunk, chunk] blocks only
    out = RMSNorm(out * sigmoid(gate(x)))         no denominator: LightNet normalises the output (low-rank
    out = proj(out)                               sigmoid output gate c -> h -> c, then RMSNorm over c)

Normalisation: there is no ``φ(q)·Σφ(k)`` denominator. With MD-LRPE the scores ``q'·k'`` carry cosines and can be
negative, so a denominator could vanish; LightNet relies on the keys' softmax (each channel's weights sum to 1) and
on the RMSNorm of the output instead. Key names ``qkv`` / ``proj`` follow `Attention` (timm ViT); LightNet's extra
parts are ``gate.{0,1}.weight`` and ``norm.weight``. Only ``rotate``-type encodings apply: a ``bias`` or ``value``
encoding needs the [n, n] logits that linear attention never forms.

Causal form: ``exp(k_s − z_t) = w_s / Z_t`` with ``w = exp(k − max over the sequence)`` and ``Z_t = Σ_{s≤t} w_s``;
the ``1 / Z_t`` is folded into the query before the PE, which is exact for channel-wise encodings (MD-LRPE: every
channel keeps its own angle) and an approximation for pair-rotating ones (RoPE). The shared max cancels; float32
underflows only for key logits of one channel more than ~80 apart.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..positions import Positions
from .attention import merge_heads, refuse_torchscript, split_heads

__all__ = ["LinearAttention", "lightnet_key_weights", "causal_key_normaliser", "linear_attend", "causal_linear_attend"]


def lightnet_key_weights(k: Tensor, key_valid: Optional[Tensor] = None, causal: bool = False) -> Tensor:
    """LightNet's key normalisation, float32.

    Non-causal: ``softmax`` over the tokens per channel (``Σ_s w_s = 1``). Causal: the unnormalised
    ``exp(k − max)``; divide the query of token t by `causal_key_normaliser` to get ``exp(k_s − z_t)``.

    Args:
        k: ``[b, h, n, d]``.
        key_valid: ``[b, n]``, True where the key is real; padded keys get weight 0.
    """
    kf = k.float()
    if key_valid is not None:
        kf = kf.masked_fill(~key_valid.to(device=k.device, dtype=torch.bool)[:, None, :, None], float("-inf"))
    m = kf.amax(dim=-2, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()        # all keys padded: weights 0
    w = torch.exp(kf - m)                                                       # exp(-inf) = 0 on padded keys
    if causal:
        return w
    z = w.sum(dim=-2, keepdim=True)
    return w / torch.where(z > 0, z, torch.ones_like(z))


def causal_key_normaliser(w: Tensor) -> Tensor:
    """``Z_t = Σ_{s≤t} w_s`` (1 where nothing is visible yet), so that ``w_s / Z_t = exp(k_s − z_t)``."""
    z = w.cumsum(dim=-2)
    return torch.where(z > 0, z, torch.ones_like(z))


def linear_attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``q (kᵀ v)``: q, k ``[b, h, n, d']``, v ``[b, h, n, d]`` -> ``[b, h, n, d]``; O(n d' d)."""
    kv = k.transpose(-2, -1) @ v                                                # [b, h, d', d]
    return q @ kv                                                               # [b, h, n, d]


def causal_linear_attend(q: Tensor, k: Tensor, v: Tensor, chunk: int = 64) -> Tensor:
    """``out_t = Σ_{s≤t} (q_t·k_s) v_s`` in chunks: an exact [chunk, chunk] product inside a chunk plus the
    running state ``Σ kᵀ v`` of the chunks before. O(n (chunk + d') d); never an [n, n] matrix."""
    n = q.shape[-2]
    state = q.new_zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])                # [b, h, d', d]
    outs = []
    for a in range(0, n, chunk):
        qc, kc, vc = q[..., a:a + chunk, :], k[..., a:a + chunk, :], v[..., a:a + chunk, :]
        scores = (qc @ kc.transpose(-2, -1)).tril()                             # [b, h, c, c]
        outs.append(scores @ vc + qc @ state)                                   # [b, h, c, d]
        state = state + kc.transpose(-2, -1) @ vc
    return torch.cat(outs, dim=-2)


class LinearAttention(nn.Module):
    """Multi-head linear attention (LightNet form) with a pluggable ``rotate``-type positional encoding.

    Args:
        dim: model width ``c``.
        num_heads: ``h``; ``d = c // h``.
        qkv_bias: bias on the fused qkv projection.
        proj_drop: dropout after ``proj``.
        pe: a `PositionalEncoding` with a ``rotate`` hook (e.g. `zoo.pe.lrpe.MdLrpeCosine`), or None.
        causal: causal form (language models); ``Positions.causal`` also switches it on.
        output_gate: LightNet's low-rank sigmoid output gate (``gate``: c -> h -> c, no bias).
        norm_eps: epsilon of the output RMSNorm.
        chunk: block size of the causal form.
    """

    def __prepare_scriptable__(self):
        refuse_torchscript(self)

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_drop: float = 0.0,
                 pe: Optional[nn.Module] = None, causal: bool = False, output_gate: bool = True,
                 norm_eps: float = 1e-6, chunk: int = 64):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if chunk <= 0:
            raise ValueError(f"chunk must be positive, got {chunk}")
        if pe is not None:
            from ..pe.base import overrides
            bad = [hook for hook in ("bias", "value") if overrides(pe, hook)]
            if bad:
                raise ValueError(f"{type(pe).__name__} implements {'/'.join(bad)}, which needs the [n, n] attention "
                                 f"logits; LinearAttention never forms them: use a rotate-type encoding "
                                 f"(MD-LRPE, RoPE) or softmax Attention")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.chunk = chunk
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.gate = nn.Sequential(nn.Linear(dim, num_heads, bias=False),
                                  nn.Linear(num_heads, dim, bias=False)) if output_gate else None
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pe = pe

    def forward(self, x: Tensor, pos: Optional[Positions] = None) -> Tensor:
        q, k, v = split_heads(self.qkv(x), self.num_heads)                        # [b, h, n, d] each
        out = merge_heads(self.attend(q, k, v, pos))                              # [b, n, c]
        if self.gate is not None:
            out = out * torch.sigmoid(self.gate(x))
        return self.proj_drop(self.proj(self.norm(out)))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, pos: Optional[Positions]) -> Tensor:
        """Linear attention on ``[b, h, n, d]`` tensors with the PE's rotate hook applied."""
        causal = self.causal or (pos is not None and pos.causal)
        key_valid = pos.mask if pos is not None else None
        if key_valid is not None and tuple(key_valid.shape) != (k.shape[0], k.shape[-2]):
            raise ValueError(f"pos.mask must be [b, n] = {(k.shape[0], k.shape[-2])}, got {tuple(key_valid.shape)}")
        dtype = v.dtype
        qf = F.silu(q.float())
        w = lightnet_key_weights(k, key_valid, causal)                          # [b, h, n, d] float32
        if causal:
            qf = qf / causal_key_normaliser(w)                                  # folds exp(-z_t) into the query
        if self.pe is not None:
            qf, w = self.pe.rotate(qf, w, pos)                                  # [b, h, n, d'] (MD-LRPE: d' = 2d)
        qf, w = qf.to(dtype), w.to(dtype)
        if causal:
            return causal_linear_attend(qf, w, v, self.chunk)
        return linear_attend(qf, w, v)
