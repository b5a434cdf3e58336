"""Logit temperature: a multiplier ``m`` on the queries, so that the logits become ``(m q) . k / sqrt(d)``.

    q [b, h, nq, d] --(* m, m broadcastable to [b, h, nq, d], float32)--> q' --> SDPA(q', k, v, attn_mask=bias + mask)

Scaling q instead of the logits keeps the fused SDPA kernels usable (they take no per-row or per-head scale) and
leaves additive position biases (ALiBi, T5, KERPLE, ...) and masks untouched: only the content term ``q . k`` is
sharpened or flattened, ``softmax(m * q k^T / sqrt(d) + bias)``.  Apply it after a rotary encoding has rotated q
(a per-row or per-head scalar commutes with the rotation, so the order does not change the result).

    ConstantTemperature(tau)    m = 1 / tau                                  (YaRN's factor: `ConstantTemperature.yarn`)
    LogLengthScale(train_len)   m_i = max(1, ln(i + 1) / ln(train_len)) per query row    (log-n; entropy-aware ABF)
    HeadTemperature(num_heads)  m_h learned, one per head [h, 1, 1]                      (NoPE head-based scale)

Interface: ``multiplier(q_idx, num_heads, layer=0)`` returns the float32 multiplier for the queries at absolute token
indices ``q_idx`` ``[nq]`` (so a chunk of query rows or KV-cache decoding passes the queries' own indices);
``scale_queries(q, q_idx, layer=0)`` (also ``forward``) returns ``q * m`` in q's dtype, the product computed in
float32 and rounded once.  (Not named ``apply``: that is ``nn.Module.apply``, which ``model.apply(fn)`` calls on
every submodule.)
"""
from __future__ import annotations

import abc
import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["Temperature", "ConstantTemperature", "LogLengthScale", "HeadTemperature", "yarn_attention_factor"]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(owner: str, name: str, v) -> float:
    if not _is_number(v) or v <= 0:
        raise ConfigError(f"{owner}: {name} must be a finite number > 0, got {v!r}")
    return float(v)


def _check_q_idx(q_idx: Tensor) -> None:
    if not isinstance(q_idx, Tensor) or q_idx.ndim != 1 or q_idx.dtype.is_floating_point or q_idx.dtype == torch.bool:
        got = type(q_idx).__name__ if not isinstance(q_idx, Tensor) else f"{q_idx.dtype} {tuple(q_idx.shape)}"
        raise ValueError(f"q_idx must be a 1-D integer tensor of absolute query indices, got {got}")


def yarn_attention_factor(factor: float, mscale: Optional[float] = None, mscale_all_dim: Optional[float] = None
                          ) -> float:
    """YaRN's attention factor (Peng et al., arXiv 2309.00071, ``sqrt(1/t) = 0.1 ln(s) + 1``), as HF transformers'
    ``modeling_rope_utils._compute_yarn_parameters`` computes it::

        get_mscale(s, k=1) = 0.1 * k * ln(s) + 1   if s > 1 else 1
        factor  = get_mscale(s, mscale) / get_mscale(s, mscale_all_dim)   if mscale and mscale_all_dim  (DeepSeek)
                  get_mscale(s)                                            otherwise

    HF ignores ``mscale`` or ``mscale_all_dim`` given alone (and treats 0 as absent); here one given alone is refused,
    as in `zoo.pe.rope_scaling`.  ``factor`` is the context-extension ratio (HF uses ``max_position_embeddings /
    original_max_position_embeddings`` when the config has the latter)."""
    factor = _positive("yarn_attention_factor", "factor", factor)
    if (mscale is None) != (mscale_all_dim is None):
        raise ConfigError(f"yarn_attention_factor: mscale ({mscale!r}) and mscale_all_dim ({mscale_all_dim!r}) only "
                          f"act together (factor = get_mscale(s, mscale) / get_mscale(s, mscale_all_dim)); give both "
                          f"or neither")
    for name, v in (("mscale", mscale), ("mscale_all_dim", mscale_all_dim)):
        if v is not None and (not _is_number(v) or v < 0):
            raise ConfigError(f"yarn_attention_factor: {name} must be a number >= 0, got {v!r}")

    def get_mscale(s: float, k: float = 1.0) -> float:
        return 1.0 if s <= 1 else 0.1 * k * math.log(s) + 1.0

    if mscale and mscale_all_dim:
        return get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
    return get_mscale(factor)


class Temperature(nn.Module, abc.ABC):
    """Base of the query multipliers: subclasses implement `multiplier` (abstract: the base cannot be built)."""

    @abc.abstractmethod
    def multiplier(self, q_idx: Tensor, num_heads: int, layer: int = 0) -> Tensor:
        """float32 multiplier broadcastable to ``[b, h, nq, d]`` for queries at absolute indices ``q_idx`` ``[nq]``
        of attention layer ``layer`` (0-based) with ``num_heads`` heads."""

    def scale_queries(self, q: Tensor, q_idx: Tensor, layer: int = 0) -> Tensor:
        """``q * m`` for q ``[b, h, nq, d]`` (any float dtype, kept), ``q_idx`` ``[nq]`` the queries' absolute
        indices."""
        if not isinstance(q, Tensor) or q.ndim != 4 or not q.dtype.is_floating_point:
            got = type(q).__name__ if not isinstance(q, Tensor) else f"{q.dtype} {tuple(q.shape)}"
            raise ValueError(f"q must be a float tensor [b, h, nq, d], got {got}")
        _check_q_idx(q_idx)
        if q_idx.shape[0] != q.shape[2]:
            raise ValueError(f"q_idx has {q_idx.shape[0]} indices but q has nq={q.shape[2]} queries "
                             f"{tuple(q.shape)} [b, h, nq, d]")
        m = self.multiplier(q_idx.to(q.device), q.shape[1], layer)              # float32, [.., h|1, nq|1, 1]
        return (q * m).to(q.dtype)                                              # promoted to >= float32, rounded once

    def forward(self, q: Tensor, q_idx: Tensor, layer: int = 0) -> Tensor:
        return self.scale_queries(q, q_idx, layer)


class ConstantTemperature(Temperature):
    """Softmax temperature ``tau > 0``: ``m = 1 / tau`` for every query, head and layer (``tau < 1`` sharpens).

    ``ConstantTemperature.yarn(s)`` is YaRN's attention factor ``f`` as a temperature: HF multiplies cos and sin by
    ``f``, so q.k (rotated q and k) by ``f**2``; the equivalent query multiplier is ``m = f**2`` (``tau = 1 / f**2``).
    Use it with an unscaled RoPE, NoPE or a bias encoding: `zoo.pe.rope_scaling`'s YaRN RoPE already applies ``f``
    to cos and sin, and both together would apply it twice."""

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = _positive("ConstantTemperature", "tau", tau)

    @property
    def value(self) -> float:
        """The multiplier ``1 / tau``."""
        return 1.0 / self.tau

    @classmethod
    def yarn(cls, factor: float, mscale: Optional[float] = None, mscale_all_dim: Optional[float] = None
             ) -> "ConstantTemperature":
        """YaRN's logit scale ``yarn_attention_factor(factor, ...) ** 2`` as a temperature (see the class)."""
        f = yarn_attention_factor(factor, mscale, mscale_all_dim)
        return cls(tau=1.0 / (f * f))

    def multiplier(self, q_idx: Tensor, num_heads: int, layer: int = 0) -> Tensor:
        _check_q_idx(q_idx)
        return torch.full((1, 1, 1, 1), self.value, dtype=torch.float32, device=q_idx.device)

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}"


class LogLengthScale(Temperature):
    """Length-dependent log scaling: ``m_i = max(1, ln(n_i) / ln(train_len))`` with ``n_i = i + 1`` the number of keys
    query ``i`` (absolute index) sees in a causal model; layers ``< skip_layers`` are left unscaled (``m = 1``).

    The "log-n" scaling of Chiang & Cholak (arXiv 2202.12172) and Su (``log_{train_len} n``), with a lower bound of 1
    so that nothing changes inside the training length.  Entropy-aware ABF (Zhang et al., "Extending LLMs' Context
    Window with 100 Samples", arXiv 2401.07004) uses this form: `LogLengthScale.entropy_aware_abf`.

    What the official code (GAIR-NLP/Entropy-ABF, ``patch/EABF.py``) confirms: ``scale = ln(position_ids + 1) /
    ln(4096)``, values below 1 set to 1, multiplied into the rotated queries only (so the logits scale by it; the
    keys are not scaled), natural logs (so the base of the log is the training length 4096), and a helper
    ``apply_eabf(model, count=2)`` that restores the unscaled rotation in the first two layers (hence
    ``skip_layers=2`` in `entropy_aware_abf`).  Not confirmed: the paper's own wording on the skipped layers (only a
    third-party summary was read: "not applied to the initial layers"), and whether ``count=2`` takes effect in their
    runs -- it sets a per-layer attribute ``self_attn.apply_rotary_pos_emb`` while their attention forward (their
    flash-attention patch) calls the module-level ``modeling_llama.apply_rotary_pos_emb``.  Their scale is cast to
    the model dtype before the product; here the product is computed in float32 and rounded once.  ABF's other part,
    RoPE base 500,000, belongs to the encoding, not here.

    Args:
        train_len: the training context length (``>= 2``), the base of the log.
        skip_layers: the first ``skip_layers`` attention layers (0-based ``layer < skip_layers``) are not scaled.
    """

    def __init__(self, train_len: int, skip_layers: int = 0):
        super().__init__()
        if isinstance(train_len, bool) or not isinstance(train_len, int) or train_len < 2:
            raise ConfigError(f"LogLengthScale: train_len must be an int >= 2 (the base of the log), got {train_len!r}")
        if isinstance(skip_layers, bool) or not isinstance(skip_layers, int) or skip_layers < 0:
            raise ConfigError(f"LogLengthScale: skip_layers must be an int >= 0, got {skip_layers!r}")
        self.train_len = train_len
        self.skip_layers = skip_layers

    @classmethod
    def entropy_aware_abf(cls, train_len: int = 4096, skip_layers: int = 2) -> "LogLengthScale":
        """Entropy-aware ABF's attention scalar (Llama-2: ``train_len`` 4096, the first two layers unscaled)."""
        return cls(train_len, skip_layers=skip_layers)

    def multiplier(self, q_idx: Tensor, num_heads: int, layer: int = 0) -> Tensor:
        _check_q_idx(q_idx)
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"layer must be an int >= 0 (0-based attention layer), got {layer!r}")
        if layer < self.skip_layers:
            return torch.ones(1, 1, 1, 1, dtype=torch.float32, device=q_idx.device)
        if q_idx.numel() and int(q_idx.min()) < 0:
            raise ValueError(f"q_idx must be absolute indices >= 0, got min {int(q_idx.min())}")
        n = (q_idx + 1).to(torch.float32)                                       # keys seen by query i (causal)
        m = (torch.log(n) / math.log(self.train_len)).clamp_min(1.0)            # [nq]
        return m.view(1, 1, -1, 1)                                              # [1, 1, nq, 1]

    def extra_repr(self) -> str:
        return f"train_len={self.train_len}, skip_layers={self.skip_layers}"


class HeadTemperature(Temperature):
    """A learnable multiplier per head, ``m = scale`` ``[h, 1, 1]`` (float32 parameter), initialised to ``init``.

    Head-based attention scale for NoPE models (Wang et al., "Length Generalization of Causal Transformers without
    Position Encoding", arXiv 2404.12224): every head gets its own softmax temperature, found by training only these
    ``h`` values per layer on a little long-context data (the rest of the model frozen).  The official code
    (AntNLP/nope_head_scale, ``models/llama_nope.py``) parameterises it the same way: ``scale_param`` ``[num_heads]``
    initialised to the uniform scale (``--softmax_scale``, 1.6 in its ``run_hs.sh``), queries multiplied by
    ``scale_param / sqrt(d)`` (the usual ``1/sqrt(d)`` stays in SDPA here), the base model frozen.  Their parameter is
    bfloat16; here it is float32.  Their script also passes ``--scale_lb 1`` ("lower bound for softmax_scale");
    ``min_value`` offers such a bound (``clamp_min`` in every call), but where their code applies it was not found.

    Args:
        num_heads: ``h``.
        init: initial multiplier of every head (> 0).
        min_value: optional lower bound on the multiplier (None: none).
    """

    def __init__(self, num_heads: int, init: float = 1.0, min_value: Optional[float] = None):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ConfigError(f"HeadTemperature: num_heads must be an int >= 1, got {num_heads!r}")
        init = _positive("HeadTemperature", "init", init)
        if min_value is not None:
            min_value = _positive("HeadTemperature", "min_value", min_value)
        self.num_heads = num_heads
        self.min_value = min_value
        self.scale = nn.Parameter(torch.full((num_heads,), init, dtype=torch.float32))

    def multiplier(self, q_idx: Tensor, num_heads: int, layer: int = 0) -> Tensor:
        _check_q_idx(q_idx)
        if num_heads != self.num_heads:
            raise ValueError(f"HeadTemperature has {self.num_heads} heads but the queries have num_heads={num_heads}")
        m = self.scale.float()
        if self.min_value is not None:
            m = m.clamp_min(self.min_value)
        return m.to(q_idx.device).view(-1, 1, 1)                                # [h, 1, 1]

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}" + ("" if self.min_value is None else f", min_value={self.min_value:g}")
