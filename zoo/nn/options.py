"""Attention options of a model: one small spec for masks, logit temperature and training-free context extension.

    attention = {"window": 256, "sinks": 4}                                  sliding window + attention sinks
    attention = {"temperature": {"name": "log_length", "train_len": 512}}   log-n scaling beyond the training length
    attention = {"extension": {"name": "self_extend", "group": 8, "window": 128}}    SelfExtend on a RoPE decoder

Keys: ``window``, ``sinks``, ``block``, ``per_document`` (an `AttentionMask`; the attention's own causality is added
by the attention), ``temperature`` and ``extension`` (a registered name or ``{"name": ..., **kwargs}``).  A body
(`zoo.nn.TransformerEncoder`) builds one temperature and one extension per layer (a learned per-head temperature has
its own parameters in every layer; Ms-PoE fixes a head order per layer) and ``set_attention`` changes them on a built
or loaded model: that is how a trained model is extended at inference.

Temperatures (`zoo.nn.temperature`):

    constant           tau                               softmax temperature 1/tau
    yarn               factor, mscale, mscale_all_dim    YaRN's attention factor (Peng et al., arXiv 2309.00071)
    log_length         train_len, skip_layers            log-n scaling (Chiang & Cholak, arXiv 2202.12172)
    entropy_aware_abf  train_len, skip_layers            Zhang et al., arXiv 2401.07004 (first two layers unscaled)
    head               init, min_value                   per-head learned scale (Wang et al., arXiv 2404.12224)

Extensions (`zoo.nn.extension`; RoPE encodings only, the keys are cached un-rotated):

    self_extend   group, window                       Jin et al., ICML 2024, arXiv 2401.01325
    string        shift, window, attention_factor     An et al., ICLR 2025, arXiv 2410.18745
    lm_infinite   window, n_global, limit_distance    Han et al., NAACL 2024, arXiv 2308.16137
    ms_poe        min_ratio, max_ratio, head_type, skip_layers   Zhang et al., arXiv 2403.04797
"""
from __future__ import annotations

import abc
import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .extension import (STRING_ATTENTION_FACTOR, _int_at_least, lm_infinite_attention, ms_poe_head_order, ms_poe_ratios,
                        ms_poe_rotate, self_extend_attention, string_attention)
from .masks import AttentionMask
from .temperature import ConstantTemperature, HeadTemperature, LogLengthScale, Temperature

__all__ = ["AttentionOptions", "attention_options", "ContextExtension", "SelfExtend", "StringShift", "LMInfinite",
           "MsPoE", "TEMPERATURES", "EXTENSIONS", "build_temperature", "build_extension", "list_attention_options"]

_MASK_KEYS = ("window", "sinks", "block", "per_document")
_KEYS = _MASK_KEYS + ("temperature", "extension")


def _closest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=3)
    return f"; closest: {', '.join(close)}" if close else ""


def _split(kind: str, spec) -> Tuple[str, Dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"attention {kind}: a mapping needs a 'name', got keys {sorted(spec)}")
        kw = dict(spec)
        return kw.pop("name"), kw
    raise ConfigError(f"attention {kind} must be a registered name or {{'name': ..., **kwargs}}, got "
                      f"{type(spec).__name__}")


def _checked_kwargs(kind: str, name: str, fn: Callable, kw: Mapping, given_by_body: Tuple[str, ...] = ()) -> None:
    accepted = [p for p in inspect.signature(fn).parameters if p not in given_by_body]
    for k in kw:
        if k not in accepted:
            raise ConfigError(f"attention {kind} {name!r} takes no keyword {k!r} (it takes {', '.join(accepted) or 'none'})"
                              f"{_closest(k, accepted)}")


# ---- temperatures -------------------------------------------------------------------------------------------------

def _constant(num_heads: int, tau: float = 1.0) -> Temperature:
    return ConstantTemperature(tau)


def _yarn(num_heads: int, factor: float, mscale: Optional[float] = None,
          mscale_all_dim: Optional[float] = None) -> Temperature:
    return ConstantTemperature.yarn(factor, mscale, mscale_all_dim)


def _log_length(num_heads: int, train_len: int, skip_layers: int = 0) -> Temperature:
    return LogLengthScale(train_len, skip_layers)


def _eabf(num_heads: int, train_len: int = 4096, skip_layers: int = 2) -> Temperature:
    return LogLengthScale.entropy_aware_abf(train_len, skip_layers)


def _head(num_heads: int, init: float = 1.0, min_value: Optional[float] = None) -> Temperature:
    return HeadTemperature(num_heads, init, min_value)


#: name -> (builder(num_heads, **kwargs), paper)
TEMPERATURES: Dict[str, Tuple[Callable[..., Temperature], str]] = {
    "constant": (_constant, "softmax temperature (a fixed logit multiplier 1/tau)"),
    "yarn": (_yarn, "Peng et al., YaRN: Efficient Context Window Extension of Large Language Models, arXiv 2309.00071"),
    "log_length": (_log_length, "Chiang & Cholak, Overcoming a Theoretical Limitation of Self-Attention, "
                                "arXiv 2202.12172"),
    "entropy_aware_abf": (_eabf, "Zhang et al., Extending LLMs' Context Window with 100 Samples, arXiv 2401.07004"),
    "head": (_head, "Wang et al., Length Generalization of Causal Transformers without Position Encoding, "
                    "arXiv 2404.12224"),
}


def build_temperature(spec, num_heads: int) -> Temperature:
    """A `Temperature` from a registered name or ``{"name": ..., **kwargs}`` for a layer of ``num_heads`` heads."""
    name, kw = _split("temperature", spec)
    if name not in TEMPERATURES:
        raise ConfigError(f"unknown attention temperature {name!r}; registered: {', '.join(TEMPERATURES)}"
                          f"{_closest(name, TEMPERATURES)}")
    fn = TEMPERATURES[name][0]
    _checked_kwargs("temperature", name, fn, kw, ("num_heads",))
    try:
        return fn(num_heads, **kw)
    except TypeError as e:
        raise ConfigError(f"attention temperature {name!r}: {e}") from None


# ---- extensions ---------------------------------------------------------------------------------------------------

class ContextExtension(nn.Module, abc.ABC):
    """Training-free extension of a RoPE attention: computes the attention from *un-rotated* q ``[b, h, nq, d]`` and
    k, v ``[b, h, nk, d]`` with the encoding's ``cos_sin``, at absolute positions ``q_idx`` ``[nq]`` / ``k_idx``
    ``[nk]`` (causal).  One instance per attention layer."""

    #: the paper, for `list_attention_options`
    paper: str = ""
    #: the 0-based layer of the attention using it (set by `zoo.nn.Attention.set_extension`)
    layer_idx: int = 0

    @abc.abstractmethod
    def attend(self, q: Tensor, k: Tensor, v: Tensor, rope: nn.Module, q_idx: Tensor, k_idx: Tensor,
               scale: float) -> Tensor:
        """``[b, h, nq, dv]``: the causal attention of the queries over the keys."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, rope: nn.Module, q_idx: Tensor, k_idx: Tensor,
                scale: float) -> Tensor:
        return self.attend(q, k, v, rope, q_idx, k_idx, scale)


class SelfExtend(ContextExtension):
    """SelfExtend: neighbours within ``window`` at exact positions, farther keys at positions grouped by ``group``
    (`zoo.nn.extension.self_extend_attention`)."""

    paper = "Jin et al., LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning, ICML 2024, arXiv 2401.01325"

    def __init__(self, group: int, window: int):
        super().__init__()
        self.group = _int_at_least("self_extend", "group", group, 1)
        self.window = _int_at_least("self_extend", "window", window, 1)

    def attend(self, q, k, v, rope, q_idx, k_idx, scale):
        return self_extend_attention(q, k, v, rope, self.group, self.window, q_idx, k_idx, scale)

    def extra_repr(self) -> str:
        return f"group={self.group}, window={self.window}"


class StringShift(ContextExtension):
    """STRING: distances ``>= shift`` moved down by ``shift - window`` (`zoo.nn.extension.string_attention`)."""

    paper = "An et al., Why Does the Effective Context Length of LLMs Fall Short?, ICLR 2025, arXiv 2410.18745"

    def __init__(self, shift: int, window: int = 128, attention_factor: float = STRING_ATTENTION_FACTOR):
        super().__init__()
        self.shift = _int_at_least("string", "shift", shift, 0)
        self.window = _int_at_least("string", "window", window, 0)
        if window > shift:
            raise ConfigError(f"string: window ({window}) must be <= shift ({shift})")
        if isinstance(attention_factor, bool) or not isinstance(attention_factor, (int, float)) \
                or not attention_factor > 0:
            raise ConfigError(f"string: attention_factor must be a number > 0, got {attention_factor!r}")
        self.attention_factor = float(attention_factor)

    def attend(self, q, k, v, rope, q_idx, k_idx, scale):
        return string_attention(q, k, v, rope, self.shift, self.window, q_idx, k_idx, scale, self.attention_factor)

    def extra_repr(self) -> str:
        return f"shift={self.shift}, window={self.window}, attention_factor={self.attention_factor:g}"


class LMInfinite(ContextExtension):
    """LM-Infinite's Lambda mask: a local window plus the first ``n_global`` tokens at a capped distance
    (`zoo.nn.extension.lm_infinite_attention`)."""

    paper = ("Han et al., LM-Infinite: Zero-Shot Extreme Length Generalization for Large Language Models, "
             "NAACL 2024, arXiv 2308.16137")

    def __init__(self, window: int, n_global: int, limit_distance: Optional[int] = None):
        super().__init__()
        self.window = _int_at_least("lm_infinite", "window", window, 1)
        self.n_global = _int_at_least("lm_infinite", "n_global", n_global, 0)
        self.limit_distance = None if limit_distance is None else \
            _int_at_least("lm_infinite", "limit_distance", limit_distance, 0)

    def attend(self, q, k, v, rope, q_idx, k_idx, scale):
        return lm_infinite_attention(q, k, v, rope, self.window, self.n_global, q_idx, k_idx, scale,
                                     self.limit_distance)

    def extra_repr(self) -> str:
        return f"window={self.window}, n_global={self.n_global}, limit_distance={self.limit_distance}"


class MsPoE(ContextExtension):
    """Ms-PoE: head h reads positions ``t / r_h``, the ratios ``ms_poe_ratios`` ordered per layer by the heads'
    outlier scores on the first forward (then frozen: `order`, reset by `reset_order`); ``head_type="normal"`` uses
    the fixed order ``H - 1 - h``.  Then ordinary causal attention.  Layers ``< skip_layers`` keep plain RoPE: the
    official runs apply Ms-PoE to layers 2..31 of Llama's 32 (``src/ms_poe.sh``, ``--apply_layers``), so the
    default skips the first two."""

    paper = ("Zhang et al., Found in the Middle: How Language Models Use Long Contexts Better via Plug-and-Play "
             "Positional Encoding, arXiv 2403.04797")

    def __init__(self, min_ratio: float = 1.2, max_ratio: float = 1.8, head_type: str = "outlier",
                 skip_layers: int = 2):
        super().__init__()
        self.skip_layers = _int_at_least("ms_poe", "skip_layers", skip_layers, 0)
        if head_type not in ("outlier", "normal"):
            raise ConfigError(f"ms_poe: head_type must be 'outlier' or 'normal', got {head_type!r}")
        ms_poe_ratios(1, min_ratio, max_ratio)                                  # checks the ratios
        self.min_ratio, self.max_ratio, self.head_type = min_ratio, max_ratio, head_type
        self.order: Optional[Tensor] = None

    def reset_order(self) -> None:
        self.order = None

    def attend(self, q, k, v, rope, q_idx, k_idx, scale):
        h = q.shape[1]
        allowed = (k_idx.to(q_idx.device)[None, :] <= q_idx[:, None])           # [nq, nk] causal
        if self.layer_idx < self.skip_layers:                                   # plain RoPE in the first layers
            ones = torch.ones(h, device=q.device)
            q, k = ms_poe_rotate(q, k, rope, ones, q_idx, k_idx)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
        if self.order is None:
            if self.head_type == "normal":
                self.order = torch.arange(h - 1, -1, -1, device=q.device)
            else:
                self.order = ms_poe_head_order(q, k[..., k.shape[-2] - q.shape[-2]:, :], scale)   # the last nq keys
        ratios = ms_poe_ratios(h, self.min_ratio, self.max_ratio, device=q.device)[self.order.to(q.device)]
        q, k = ms_poe_rotate(q, k, rope, ratios, q_idx, k_idx)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)

    def extra_repr(self) -> str:
        return (f"min_ratio={self.min_ratio:g}, max_ratio={self.max_ratio:g}, head_type={self.head_type!r}, "
                f"skip_layers={self.skip_layers}")


#: name -> extension class
EXTENSIONS: Dict[str, type] = {"self_extend": SelfExtend, "string": StringShift, "lm_infinite": LMInfinite,
                               "ms_poe": MsPoE}


def build_extension(spec) -> ContextExtension:
    """A `ContextExtension` from a registered name or ``{"name": ..., **kwargs}``."""
    name, kw = _split("extension", spec)
    if name not in EXTENSIONS:
        raise ConfigError(f"unknown attention extension {name!r}; registered: {', '.join(EXTENSIONS)}"
                          f"{_closest(name, EXTENSIONS)}")
    cls = EXTENSIONS[name]
    _checked_kwargs("extension", name, cls.__init__, kw, ("self",))
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"attention extension {name!r}: {e}") from None


# ---- the spec -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionOptions:
    """A parsed attention spec: a mask (or None), a temperature spec and an extension spec (normalised to
    ``{"name": ..., **kwargs}`` or None)."""

    mask: Optional[AttentionMask] = None
    temperature: Optional[Dict[str, Any]] = None
    extension: Optional[Dict[str, Any]] = None
    spec: Dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.mask is None and self.temperature is None and self.extension is None

    def temperature_for(self, num_heads: int) -> Optional[Temperature]:
        return None if self.temperature is None else build_temperature(self.temperature, num_heads)

    def extension_for(self) -> Optional[ContextExtension]:
        return None if self.extension is None else build_extension(self.extension)

    def to_dict(self) -> Dict[str, Any]:
        """The spec as given (plain dict), for configs and exports."""
        return dict(self.spec)


def _container(node):
    from omegaconf import OmegaConf                                             # only when given an omegaconf node
    return OmegaConf.to_container(node, resolve=True)


def attention_options(spec) -> AttentionOptions:
    """Parse ``spec`` (None, an `AttentionOptions`, or a mapping with the keys of the module docstring); unknown keys
    and names raise `ConfigError` naming the closest."""
    if spec is None:
        return AttentionOptions()
    if isinstance(spec, AttentionOptions):
        return spec
    if not isinstance(spec, Mapping):
        try:
            spec = _container(spec)
        except Exception:
            raise ConfigError(f"attention must be a mapping with keys among {', '.join(_KEYS)}, got "
                              f"{type(spec).__name__}") from None
    spec = dict(spec)
    for k in spec:
        if k not in _KEYS:
            raise ConfigError(f"attention: unknown key {k!r}; keys: {', '.join(_KEYS)}{_closest(k, _KEYS)}")
    mask_kw = {k: spec[k] for k in _MASK_KEYS if k in spec and spec[k] is not None}
    mask = AttentionMask(**mask_kw) if mask_kw else None
    temp = ext = None
    if spec.get("temperature") is not None:
        name, kw = _split("temperature", spec["temperature"])
        temp = {"name": name, **kw}
        build_temperature(temp, 1)                                              # checks name and keywords now
    if spec.get("extension") is not None:
        name, kw = _split("extension", spec["extension"])
        ext = {"name": name, **kw}
        build_extension(ext)
    return AttentionOptions(mask=mask, temperature=temp, extension=ext, spec=spec)


def list_attention_options() -> Dict[str, Dict[str, str]]:
    """``{"temperature": {name: paper}, "extension": {name: paper}}``."""
    return {"temperature": {n: p for n, (_, p) in TEMPERATURES.items()},
            "extension": {n: c.paper for n, c in EXTENSIONS.items()}}
