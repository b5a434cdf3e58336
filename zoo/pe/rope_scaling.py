"""RoPE context extension: the frequency schemes of HF transformers' ``rope_parameters`` and a RoPE that uses them.

`rope_frequencies(head_dim, base, scaling, seq_len, max_position_embeddings)` returns ``(inv_freq, attention_factor)``
for a ``scaling`` dict in HF's ``rope_parameters`` schema (``rope_type`` or the legacy ``type``):

    default   ``inv_t = base^(-2t/r)``                                     (Su et al., RoFormer, arXiv 2104.09864)
    linear    ``inv_t / factor``                                            (position interpolation, Chen et al. 2023,
                                                                             arXiv 2306.15595; kaiokendev)
    dynamic   base' = ``base * (factor*S/L - (factor-1))^(r/(r-2))``, S = max(seq_len, L), L = max_position_embeddings
                                                                            (dynamic NTK, /u/bloc97 and /u/emozilla)
    yarn      per-pair blend of ``inv_t`` and ``inv_t / factor`` by a linear ramp over the pairs whose number of turns
              over the original length L0 lies between ``beta_slow`` and ``beta_fast``; attention factor
              ``0.1 ln(factor) + 1`` (or the DeepSeek ``mscale / mscale_all_dim`` ratio)
                                                                            (Peng et al., YaRN, arXiv 2309.00071)
    longrope  ``inv_t / ext_t``, ext = ``long_factor`` if seq_len > L0 else ``short_factor``; attention factor
              ``sqrt(1 + ln(factor) / ln(L0))``                             (Ding et al., LongRoPE, arXiv 2402.13753)
    llama3    wavelength > L0/low: ``inv/factor``; < L0/high: ``inv``; between: smooth blend  (Llama 3.1, Meta 2024)

Verified against ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` of transformers 5.24.0 (tests compare to
1e-6 relative): the frequencies are computed here in float64 on the CPU and rounded once to float32, HF computes
them in float32, so the two differ by at most a few ulp. Where HF only logs a warning for a malformed field we raise
a ValueError that names it (see `rope_frequencies`).

`ScaledRoPE` is `zoo.pe.rope.RoPE` with these frequencies: ``attention_factor`` multiplies cos and sin (so q.k scales
by its square, as in HF), dynamic NTK and LongRoPE pick their frequencies from ``S = max(position) + 1`` of each call.
Difference from HF, on purpose: HF's dynamic NTK is *stateful* (it keeps the frequencies of the longest sequence seen
so far until a call shorter than the original length resets them); here the frequencies are a function of the current
call only, so the same input always gives the same output. The two agree whenever the length only grows (prefill,
then decoding) and after a reset.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Hashable, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .registry import register_pe
from .rope import RoPE

__all__ = ["ROPE_TYPES", "rope_frequencies", "rotary_dim", "ScaledRoPE", "rope_linear", "rope_dynamic", "rope_yarn",
           "rope_longrope", "rope_llama3"]

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")

_COMMON = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
_FIELDS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "truncate"},
    "longrope": {"factor", "original_max_position_embeddings", "attention_factor", "short_factor", "long_factor"},
    "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
}


# ---- validation -----------------------------------------------------------------------------------------------------
def _is_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def _rope_type(scaling: Optional[Mapping[str, Any]]) -> str:
    if scaling is None:
        return "default"
    if not isinstance(scaling, Mapping):
        raise ValueError(f"scaling must be a dict in HF's rope_parameters schema (e.g. {{'rope_type': 'yarn', "
                         f"'factor': 4.0, 'original_max_position_embeddings': 4096}}) or None, got {scaling!r}")
    a, b = scaling.get("rope_type"), scaling.get("type")
    if a is not None and b is not None and a != b:
        raise ValueError(f"scaling has rope_type={a!r} and the legacy type={b!r}, which contradict each other; "
                         f"keep only rope_type")
    kind = a if a is not None else (b if b is not None else "default")
    if kind not in ROPE_TYPES:
        raise ValueError(f"scaling rope_type {kind!r} is not supported; expected one of {ROPE_TYPES}")
    unknown = sorted(k for k, v in scaling.items() if v is not None and k not in _COMMON | _FIELDS[kind])
    if unknown:
        raise ValueError(f"scaling field(s) {unknown} are not used by rope_type {kind!r} (HF would ignore them with a "
                         f"warning); fields for {kind!r}: {sorted(_FIELDS[kind]) or 'none beyond rope_type'}")
    return kind


def _get(scaling: Optional[Mapping[str, Any]], name: str):
    return None if scaling is None else scaling.get(name)       # HF configs store absent fields as null


def _positive(value, name: str, kind: str, hint: str = "") -> float:
    if not _is_number(value) or value <= 0:
        raise ValueError(f"rope_type {kind!r}: {name} must be a positive number{hint}, got {value!r}")
    return float(value)


def _factor(scaling, kind: str, required: bool = True) -> Optional[float]:
    f = _get(scaling, "factor")
    if f is None:
        if required:
            raise ValueError(f"rope_type {kind!r} needs scaling['factor'], the context extension ratio (e.g. 4.0 = "
                             f"max_position_embeddings / original_max_position_embeddings)")
        return None
    if not _is_number(f) or f < 1:
        raise ValueError(f"rope_type {kind!r}: factor must be a number >= 1 (the context extension ratio; < 1 would "
                         f"shrink the context), got {f!r}")
    return float(f)


def _original_length(scaling, kind: str, max_position_embeddings) -> float:
    # HF's standardize_rope_params: original_max_position_embeddings defaults to max_position_embeddings
    omp = _get(scaling, "original_max_position_embeddings")
    if omp is None:
        omp = max_position_embeddings
    if omp is None:
        raise ValueError(f"rope_type {kind!r} needs scaling['original_max_position_embeddings'] (the pretraining "
                         f"length) or max_position_embeddings=")
    return _positive(omp, "original_max_position_embeddings", kind)


def rotary_dim(head_dim: int, scaling: Optional[Mapping[str, Any]] = None) -> int:
    """``int(head_dim * partial_rotary_factor)`` (HF's rule), checked to be even and positive."""
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
    prf = _get(scaling, "partial_rotary_factor")
    if prf is None:
        return head_dim
    if not _is_number(prf) or not 0 < prf <= 1:
        raise ValueError(f"scaling['partial_rotary_factor'] must be a number in (0, 1], got {prf!r}")
    r = int(head_dim * prf)
    if r < 2 or r % 2:
        raise ValueError(f"partial_rotary_factor={prf} gives {r} rotary channels of head_dim={head_dim}; the rotary "
                         f"dim must be even and >= 2")
    return r


# ---- the frequency schemes ----------------------------------------------------------------------------------------
def _exponents(r: int) -> Tensor:
    return torch.arange(0, r, 2, dtype=torch.float64) / r                 # [r/2]: 2t / r


def _frequencies(r: int, base: float, scaling, seq_len, max_position_embeddings) -> Tuple[Tensor, float]:
    """float64 inv_freq ``[r/2]`` and attention factor for ``r`` rotary channels."""
    kind = _rope_type(scaling)
    if not _is_number(base) or base <= 1:
        raise ValueError(f"base (rope_theta) must be a number > 1, got {base!r}")
    theta = _get(scaling, "rope_theta")
    if theta is not None and theta != base:
        raise ValueError(f"scaling['rope_theta']={theta!r} contradicts base={base!r}; pass base=scaling['rope_theta']")
    if seq_len is not None:
        seq_len = _positive(seq_len, "seq_len", kind)
    if max_position_embeddings is not None:
        max_position_embeddings = _positive(max_position_embeddings, "max_position_embeddings", kind)
    base = float(base)
    inv = base ** -_exponents(r)                                          # [r/2], highest frequency first

    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / _factor(scaling, kind), 1.0

    if kind == "dynamic":
        factor = _factor(scaling, kind)
        if max_position_embeddings is None:
            raise ValueError("rope_type 'dynamic' needs max_position_embeddings= (the length the model was trained "
                             "at, HF config.max_position_embeddings); frequencies change above it")
        if r <= 2:
            raise ValueError(f"rope_type 'dynamic' needs a rotary dim > 2 (its exponent is r/(r-2)), got {r}")
        length = max_position_embeddings if seq_len is None else max(seq_len, max_position_embeddings)
        new_base = base * (factor * length / max_position_embeddings - (factor - 1)) ** (r / (r - 2))
        return new_base ** -_exponents(r), 1.0

    omp = _original_length(scaling, kind, max_position_embeddings)

    if kind == "yarn":
        factor = _factor(scaling, kind)
        attention = _get(scaling, "attention_factor")
        mscale, mscale_all = _get(scaling, "mscale"), _get(scaling, "mscale_all_dim")
        if (mscale is None) != (mscale_all is None):
            raise ValueError("rope_type 'yarn': mscale and mscale_all_dim only act together (attention factor = "
                             "m(factor, mscale) / m(factor, mscale_all_dim); HF ignores one given alone); give both "
                             "or neither")
        for name, v in (("mscale", mscale), ("mscale_all_dim", mscale_all)):
            if v is not None and (not _is_number(v) or v < 0):
                raise ValueError(f"rope_type 'yarn': {name} must be a number >= 0, got {v!r}")

        def m(scale: float, k: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * k * math.log(scale) + 1.0

        if attention is not None:
            attention = _positive(attention, "attention_factor", kind)
        elif mscale and mscale_all:                                       # HF: zeros count as absent
            attention = m(factor, mscale) / m(factor, mscale_all)
        else:
            attention = m(factor)
        beta_fast = _get(scaling, "beta_fast") or 32                      # HF: `or` -> 0 means the default too
        beta_slow = _get(scaling, "beta_slow") or 1
        beta_fast = _positive(beta_fast, "beta_fast", kind, " (turns over the original length)")
        beta_slow = _positive(beta_slow, "beta_slow", kind, " (turns over the original length)")
        if beta_fast < beta_slow:
            raise ValueError(f"rope_type 'yarn': beta_fast ({beta_fast}) must be >= beta_slow ({beta_slow}); defaults "
                             f"are 32 and 1")
        truncate = _get(scaling, "truncate")
        truncate = True if truncate is None else truncate
        if not isinstance(truncate, bool):
            raise ValueError(f"rope_type 'yarn': truncate must be a bool, got {truncate!r}")

        def pair_with_turns(turns: float) -> float:
            # the (fractional) pair index whose wavelength fits `turns` times into the original length
            return r * math.log(omp / (turns * 2 * math.pi)) / (2 * math.log(base))

        low, high = pair_with_turns(beta_fast), pair_with_turns(beta_slow)
        if truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, r - 1)
        if low == high:
            high += 0.001                                                 # as HF: avoid 0/0
        # per pair: 0 = keep the frequency (extrapolate), 1 = divide it by factor (interpolate)
        ramp = ((torch.arange(r // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        return inv * (1 - ramp) + (inv / factor) * ramp, float(attention)

    if kind == "longrope":
        factor = _factor(scaling, kind, required=False)
        if factor is None:
            if max_position_embeddings is None:
                raise ValueError("rope_type 'longrope' needs scaling['factor'] or max_position_embeddings= (factor "
                                 "defaults to max_position_embeddings / original_max_position_embeddings)")
            factor = max_position_embeddings / omp
            if factor < 1:
                raise ValueError(f"rope_type 'longrope': max_position_embeddings ({max_position_embeddings:g}) is "
                                 f"below original_max_position_embeddings ({omp:g}); the implied factor must be >= 1")
        attention = _get(scaling, "attention_factor")
        if attention is not None:
            attention = _positive(attention, "attention_factor", kind)
        else:
            attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(omp))
        ext = {}
        for name in ("short_factor", "long_factor"):
            v = _get(scaling, name)
            if not isinstance(v, (list, tuple)) or len(v) != r // 2 or not all(_is_number(x) and x > 0 for x in v):
                got = f"a list of length {len(v)}" if isinstance(v, (list, tuple)) else repr(v)
                raise ValueError(f"rope_type 'longrope' needs scaling['{name}']: a list of {r // 2} positive numbers "
                                 f"(one per rotary pair, rotary dim {r}), got {got}")
            ext[name] = torch.tensor([float(x) for x in v], dtype=torch.float64)
        use = ext["long_factor"] if seq_len is not None and seq_len > omp else ext["short_factor"]
        return inv / use, float(attention)

    # llama3
    factor = _factor(scaling, kind)
    low_f = _positive(_get(scaling, "low_freq_factor"), "low_freq_factor", kind, " (1 in Llama 3.1)")
    high_f = _positive(_get(scaling, "high_freq_factor"), "high_freq_factor", kind, " (4 in Llama 3.1)")
    if low_f >= high_f:
        raise ValueError(f"rope_type 'llama3': low_freq_factor ({low_f:g}) must be < high_freq_factor ({high_f:g}); "
                         f"Llama 3.1 uses 1 and 4")
    wavelen = 2 * math.pi / inv
    smooth = (omp / wavelen - low_f) / (high_f - low_f)
    blended = (1 - smooth) * inv / factor + smooth * inv
    out = torch.where(wavelen > omp / low_f, inv / factor, inv)           # long wavelengths: interpolate
    medium = (wavelen >= omp / high_f) & (wavelen <= omp / low_f)
    return torch.where(medium, blended, out), 1.0


def rope_frequencies(head_dim: int, base: float = 10000.0, scaling: Optional[Mapping[str, Any]] = None,
                     seq_len: Optional[float] = None, max_position_embeddings: Optional[int] = None,
                     device=None) -> Tuple[Tensor, float]:
    """RoPE frequencies and attention factor of a HF ``rope_parameters`` dict.

    Args:
        head_dim: q/k head dim; the rotary dim is ``int(head_dim * scaling['partial_rotary_factor'])`` (default all).
        base: ``rope_theta``. A ``rope_theta`` inside ``scaling`` must agree with it.
        scaling: None (plain RoPE) or ``{"rope_type" (or legacy "type"): ..., fields}``; rope types
            ``ROPE_TYPES``; fields as in HF (``factor``, ``original_max_position_embeddings``, ``beta_fast``,
            ``beta_slow``, ``mscale``, ``mscale_all_dim``, ``truncate``, ``attention_factor``, ``short_factor``,
            ``long_factor``, ``low_freq_factor``, ``high_freq_factor``, ``partial_rotary_factor``). None values count
            as absent. ``original_max_position_embeddings`` defaults to ``max_position_embeddings`` (as in HF).
        seq_len: current sequence length (max position + 1); used by "dynamic" (None = max_position_embeddings)
            and "longrope" (long factors when ``seq_len > original_max_position_embeddings``).
        max_position_embeddings: HF ``config.max_position_embeddings``; needed by "dynamic" (its original length).
        device: where the returned tensor lives.

    Returns:
        ``(inv_freq [r/2] float32, attention_factor float)``; attention_factor multiplies cos and sin.

    Raises:
        ValueError naming the field when one is missing, malformed or contradicts another: an unknown rope_type, a
        field the rope_type does not use, factor < 1, yarn without factor, beta_fast < beta_slow, mscale without
        mscale_all_dim, longrope factor lists of the wrong length, llama3 low_freq_factor >= high_freq_factor.
    """
    _rope_type(scaling)
    r = rotary_dim(head_dim, scaling)
    inv, attention = _frequencies(r, base, scaling, seq_len, max_position_embeddings)
    return inv.to(device=device, dtype=torch.float32), float(attention)


@register_pe("rope_scaled", positions="1d", paper="HF transformers rope_parameters: PI arXiv:2306.15595, dynamic NTK, "
             "YaRN arXiv:2309.00071, LongRoPE arXiv:2402.13753, Llama 3.1 arXiv:2407.21783", causal_ok=True,
             relative=True, geometry={"max_position_embeddings": "max_len"},
             example={"scaling": {"rope_type": "linear", "factor": 2.0}})
class ScaledRoPE(RoPE):
    """RoPE with HF-style context extension (``scaling`` in HF's ``rope_parameters`` schema), any layout.

    Args:
        head_dim, base, layout, p: as `zoo.pe.rope.RoPE` (``p``: p-RoPE, applied after scaling: the last pairs, the
            lowest frequencies, are zeroed).
        rot_dim: partial rotary; or give ``scaling['partial_rotary_factor']`` (both: they must agree).
        scaling: see `rope_frequencies`. None behaves exactly as `RoPE`.
        max_position_embeddings: HF ``config.max_position_embeddings`` (dynamic: the original length; yarn/longrope/
            llama3: the default of ``original_max_position_embeddings``; longrope: the default factor).

    Attention factor (YaRN, LongRoPE) multiplies cos and sin of both q and k. Dynamic NTK and LongRoPE choose their
    frequencies from ``S = max(pos.ids) + 1`` (or ``nk`` without ids) on every call; cos/sin caches are keyed by the
    frequency set, so they stay right when it changes.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, layout: str = "half", rot_dim: Optional[int] = None,
                 scaling: Optional[Mapping[str, Any]] = None, max_position_embeddings: Optional[int] = None,
                 p: float = 1.0):
        _rope_type(scaling)
        r = rotary_dim(head_dim, scaling)
        if rot_dim is not None and _get(scaling, "partial_rotary_factor") is not None and rot_dim != r:
            raise ValueError(f"rot_dim={rot_dim} contradicts scaling['partial_rotary_factor'] (-> {r} of head_dim="
                             f"{head_dim}); give one of them")
        super().__init__(head_dim, base, layout, rot_dim if rot_dim is not None else r, p)
        self.scaling: Dict[str, Any] = dict(scaling) if scaling is not None else {}
        self.rope_type = _rope_type(scaling)
        self.max_position_embeddings = max_position_embeddings
        self.length_dependent = self.rope_type in ("dynamic", "longrope")
        if self.rope_type == "dynamic":
            self.original_length = max_position_embeddings
        elif self.rope_type == "longrope":
            self.original_length = _original_length(scaling, "longrope", max_position_embeddings)
        else:
            self.original_length = None
        self._compute_frequencies(None)                                   # validate now, not at the first forward

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rope_type={self.rope_type!r}"

    def frequency_key(self, seq_len: Optional[float]) -> Hashable:
        if not self.length_dependent or seq_len is None or seq_len <= self.original_length:
            return None                                                   # below the original length: unchanged
        return "long" if self.rope_type == "longrope" else float(seq_len)

    def _compute_frequencies(self, key: Hashable) -> Tuple[Tensor, float]:
        if key == "long":
            seq_len = self.original_length + 1
        else:
            seq_len = key
        inv, attention = _frequencies(self.rot_dim, self.base, self.scaling or None, seq_len,
                                      self.max_position_embeddings)
        return inv.to(torch.float32), attention

    @property
    def attention_factor(self) -> float:
        """The factor cos/sin are multiplied by (constant per config in every HF rope type)."""
        return self.frequencies()[1]


# ---- named variants: one registered name per rope_type ------------------------------------------------------------
# ``create("rope_yarn", head_dim=64, factor=4.0)`` == ``create("rope_scaled", head_dim=64, scaling={"rope_type":
# "yarn", "factor": 4.0})``.  Fields left None take HF's defaults.  ``max_position_embeddings`` comes from the model's
# ``max_len`` in `zoo.pe.build`: the length the model was trained at, i.e. the original length of the extension.
_GEOMETRY = {"max_position_embeddings": "max_len"}


def _scaled(rope_type: str, head_dim: int, base: float, layout: str, rot_dim: Optional[int], p: float,
            max_position_embeddings: Optional[int], **fields) -> ScaledRoPE:
    scaling = {"rope_type": rope_type, **{k: v for k, v in fields.items() if v is not None}}
    return ScaledRoPE(head_dim, base, layout, rot_dim, scaling=scaling, max_position_embeddings=max_position_embeddings,
                      p=p)


@register_pe("rope_linear", positions="1d", paper="Chen et al., Extending Context Window of Large Language Models "
             "via Positional Interpolation, arXiv:2306.15595", causal_ok=True, relative=True, builds=ScaledRoPE,
             geometry=_GEOMETRY, example={"factor": 2.0})
def rope_linear(head_dim: int, factor: float, base: float = 10000.0, layout: str = "half",
                rot_dim: Optional[int] = None, p: float = 1.0,
                max_position_embeddings: Optional[int] = None) -> ScaledRoPE:
    """Position interpolation (PI): every frequency divided by ``factor``."""
    return _scaled("linear", head_dim, base, layout, rot_dim, p, max_position_embeddings, factor=factor)


# the frequencies follow the length of each call (max position + 1): a KV cache keeps keys rotated with the
# frequencies of an earlier, shorter call, and a shifted window sees other frequencies (not causal_ok, not relative)
@register_pe("rope_dynamic", positions="1d", paper="bloc97 & emozilla, Dynamically Scaled RoPE (NTK-aware), "
             "r/LocalLLaMA 2023; as HF transformers' 'dynamic'; analysed in Peng et al., YaRN, arXiv:2309.00071",
             builds=ScaledRoPE, geometry=_GEOMETRY, example={"factor": 2.0})
def rope_dynamic(head_dim: int, factor: float, max_position_embeddings: int, base: float = 10000.0,
                 layout: str = "half", rot_dim: Optional[int] = None, p: float = 1.0) -> ScaledRoPE:
    """Dynamic NTK scaling: the base grows with the length of the call beyond ``max_position_embeddings``."""
    return _scaled("dynamic", head_dim, base, layout, rot_dim, p, max_position_embeddings, factor=factor)


@register_pe("rope_yarn", positions="1d", paper="Peng et al., YaRN: Efficient Context Window Extension of Large "
             "Language Models, ICLR 2024, arXiv:2309.00071", causal_ok=True, relative=True, builds=ScaledRoPE,
             geometry=_GEOMETRY, example={"factor": 2.0})
def rope_yarn(head_dim: int, factor: float, original_max_position_embeddings: Optional[int] = None,
              beta_fast: Optional[float] = None, beta_slow: Optional[float] = None,
              attention_factor: Optional[float] = None, mscale: Optional[float] = None,
              mscale_all_dim: Optional[float] = None, truncate: Optional[bool] = None, base: float = 10000.0,
              layout: str = "half", rot_dim: Optional[int] = None, p: float = 1.0,
              max_position_embeddings: Optional[int] = None) -> ScaledRoPE:
    """YaRN: per-pair blend of the original and interpolated frequencies, and an attention factor."""
    return _scaled("yarn", head_dim, base, layout, rot_dim, p, max_position_embeddings, factor=factor,
                   original_max_position_embeddings=original_max_position_embeddings, beta_fast=beta_fast,
                   beta_slow=beta_slow, attention_factor=attention_factor, mscale=mscale,
                   mscale_all_dim=mscale_all_dim, truncate=truncate)


def _longrope_example(g: Dict[str, Any]) -> Dict[str, Any]:
    half = (g["head_dim"] or 8) // 2
    return {"short_factor": [1.0] * half, "long_factor": [float(1 + t) for t in range(half)],
            "original_max_position_embeddings": max(1, (g["max_len"] or 16) // 2)}


# short or long factors are picked by the length of the call: not causal_ok, not relative (see rope_dynamic)
@register_pe("rope_longrope", positions="1d", paper="Ding et al., LongRoPE: Extending LLM Context Window Beyond 2 "
             "Million Tokens, ICML 2024, arXiv:2402.13753", builds=ScaledRoPE, geometry=_GEOMETRY,
             example=_longrope_example)
def rope_longrope(head_dim: int, short_factor, long_factor, factor: Optional[float] = None,
                  original_max_position_embeddings: Optional[int] = None, attention_factor: Optional[float] = None,
                  base: float = 10000.0, layout: str = "half", rot_dim: Optional[int] = None, p: float = 1.0,
                  max_position_embeddings: Optional[int] = None) -> ScaledRoPE:
    """LongRoPE: searched per-pair rescale factors, short ones within the original length, long ones beyond."""
    return _scaled("longrope", head_dim, base, layout, rot_dim, p, max_position_embeddings, factor=factor,
                   short_factor=list(short_factor), long_factor=list(long_factor),
                   original_max_position_embeddings=original_max_position_embeddings,
                   attention_factor=attention_factor)


@register_pe("rope_llama3", positions="1d", paper="Llama Team, The Llama 3 Herd of Models, arXiv:2407.21783 "
             "(Llama 3.1 rope_scaling)", causal_ok=True, relative=True, builds=ScaledRoPE, geometry=_GEOMETRY,
             example={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0})
def rope_llama3(head_dim: int, factor: float, low_freq_factor: float, high_freq_factor: float,
                original_max_position_embeddings: Optional[int] = None, base: float = 10000.0,
                layout: str = "half", rot_dim: Optional[int] = None, p: float = 1.0,
                max_position_embeddings: Optional[int] = None) -> ScaledRoPE:
    """Llama 3.1: long wavelengths interpolated by ``factor``, short ones kept, a smooth blend between."""
    return _scaled("llama3", head_dim, base, layout, rot_dim, p, max_position_embeddings, factor=factor,
                   low_freq_factor=low_freq_factor, high_freq_factor=high_freq_factor,
                   original_max_position_embeddings=original_max_position_embeddings)
