"""Training-free context extension of a trained model, as the keyword overrides that rebuild it (``pe=`` and / or
``attention=`` passed to ``zoo.create`` with the trained weights): one registry for every method.

    methods = fitting_methods(model)                       # the registered methods this model's encoding allows
    kw = METHODS["yarn"].overrides(model, train_len=512, length=8192)   # {"pe": {"name": "rope_yarn", ...}}
    extended = zoo.create(name, pretrained_file=weights, **run_kwargs, **kw)

Each method decides its settings from the training length ``T`` and the evaluation length ``L`` (``s = L / T``); at
``L <= T`` every method returns what leaves the model unchanged where the method allows it.  The settings below are
the papers' recipes for a model trained at ``T``:

    none          the trained model as it is
    pi            RoPE positions divided by s                                      (Chen et al., arXiv 2306.15595)
    ntk           RoPE base b * s^(d / (d - 2)) ("NTK-aware", d = rotary dims)     (bloc97, 2023; YaRN paper, sec. 3.1)
    dynamic       dynamic NTK: the base follows each call's length (factor 1)      (HF 'dynamic')
    yarn          YaRN, factor s, original length T, its attention factor          (Peng et al., arXiv 2309.00071)
    llama3        Llama 3.1 scaling, factor s, low / high frequency factors 1 / 4  (arXiv 2407.21783)
    longrope      LongRoPE factors from a search file (`zoo.longrope_search`)      (Ding et al., arXiv 2402.13753)
    self_extend   window W = T / 2, group G = ceil((L - 1 - W) / (T - 1 - W))   (Jin et al., arXiv 2401.01325)
    string        window W = T / 8, shift S = L - T + W (largest distance T - 1)   (An et al., arXiv 2410.18745)
    lm_infinite   local window T, 10 starting tokens, distances capped at T        (Han et al., arXiv 2308.16137)
    ms_poe        heads read positions / 1.2 .. 1.8, layers 2+ (the paper's setting)  (Zhang et al., arXiv 2403.04797)
    log_scale     logit temperature max(1, ln(i + 1) / ln T) on any encoding       (arXiv 2202.12172; 2401.07004)
    alibi_interp  ALiBi slopes divided by s                                        (Al-Khateeb et al., arXiv 2310.13017)

RoPE methods fit a model whose encoding is plain RoPE over token positions (`zoo.pe.rope.RoPE` reading
``Positions.ids``); ``ntk`` also fits a rotary encoding over other positions that has a ``base`` (BiPE's RoPE over
line segments, HiRoPE over syntax levels), raised through the model's ``pe_kwargs`` (`merge_overrides` keeps the
run's other ``pe_kwargs``); ``alibi_interp`` fits plain ALiBi; ``none`` and ``log_scale`` fit every model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from torch import nn

from .errors import ConfigError

__all__ = ["ExtensionMethod", "METHODS", "encoding_of", "fitting_methods", "resolve_methods", "merge_overrides"]


def encoding_of(model: nn.Module) -> Optional[nn.Module]:
    """The attention encoding of a body-built model (one module shared by its blocks), or None."""
    blocks = getattr(model, "blocks", None)
    if not blocks:
        return None
    return getattr(getattr(blocks[0], "attn", None), "pe", None)


def _plain_rope(pe) -> bool:
    from .pe.rope import RoPE
    from .pe.rope_scaling import ScaledRoPE
    return type(pe) is RoPE or (type(pe) is ScaledRoPE and not pe.scaling)


def _base_rope(pe) -> bool:
    """A rotary encoding with a frequency ``base`` that is not plain RoPE over token positions (BiPE's RoPE over
    segments, HiRoPE over syntax levels): its base can still be raised (NTK-aware) through the model's
    ``pe_kwargs``."""
    base = getattr(pe, "base", None)
    return (pe is not None and not _plain_rope(pe) and getattr(pe, "has_rotate", False)
            and isinstance(base, (int, float)) and not isinstance(base, bool))


def _plain_or_base_rope(pe) -> bool:
    return _plain_rope(pe) or _base_rope(pe)


def merge_overrides(kwargs: Dict[str, Any], overrides: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A run's builder keywords with a method's overrides: keys replaced, ``pe_kwargs`` merged key by key."""
    out = {**kwargs, **(overrides or {})}
    if overrides and "pe_kwargs" in overrides:
        out["pe_kwargs"] = {**dict(kwargs.get("pe_kwargs") or {}), **overrides["pe_kwargs"]}
    return out


def _plain_alibi(pe) -> bool:
    from .pe.alibi import ALiBi
    return type(pe) is ALiBi


def _rope_kwargs(pe) -> Dict[str, Any]:
    kw = {"base": pe.base, "layout": pe.layout, "rot_dim": pe.rot_dim}
    if getattr(pe, "p", 1.0) != 1.0:
        kw["p"] = pe.p
    return kw


@dataclass(frozen=True)
class ExtensionMethod:
    """A training-free extension: ``fits(encoding)`` and ``build(encoding, T, L) -> overrides`` (keywords for the
    model builder: ``pe`` and / or ``attention``)."""

    name: str
    paper: str
    fits_fn: Callable[[Optional[nn.Module]], bool]
    build: Callable[[Optional[nn.Module], int, int], Dict[str, Any]]

    def fits(self, model_or_encoding) -> bool:
        pe = encoding_of(model_or_encoding) if hasattr(model_or_encoding, "blocks") else model_or_encoding
        return bool(self.fits_fn(pe))

    def overrides(self, model_or_encoding, train_len: int, length: int) -> Dict[str, Any]:
        """The builder keywords that apply this method to a model trained at ``train_len`` run at ``length``."""
        for k, v in (("train_len", train_len), ("length", length)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ConfigError(f"{self.name}: {k} must be an int >= 2, got {v!r}")
        pe = encoding_of(model_or_encoding) if hasattr(model_or_encoding, "blocks") else model_or_encoding
        if not self.fits_fn(pe):
            raise ConfigError(f"extension {self.name!r} does not fit an encoding {type(pe).__name__}")
        return self.build(pe, train_len, length)


def _s(train_len: int, length: int) -> float:
    return max(1.0, length / train_len)


def _pi(pe, T, L):
    return {"pe": {"name": "rope_linear", "factor": _s(T, L), **_rope_kwargs(pe)}}


def _ntk(pe, T, L):
    d = getattr(pe, "rot_dim", None) or pe.head_dim
    base = pe.base * _s(T, L) ** (d / (d - 2)) if d > 2 else pe.base
    if not _plain_rope(pe):
        return {"pe_kwargs": {"base": base}}                                    # the model's own encoding
    return {"pe": {"name": "rope", **{**_rope_kwargs(pe), "base": base}}}


def _dynamic(pe, T, L):
    return {"pe": {"name": "rope_dynamic", "factor": 1.0, "max_position_embeddings": T, **_rope_kwargs(pe)}}


def _yarn(pe, T, L):
    if L <= T:
        return {"pe": {"name": "rope", **_rope_kwargs(pe)}}
    return {"pe": {"name": "rope_yarn", "factor": L / T, "original_max_position_embeddings": T, **_rope_kwargs(pe)}}


def _llama3(pe, T, L):
    if L <= T:
        return {"pe": {"name": "rope", **_rope_kwargs(pe)}}
    return {"pe": {"name": "rope_llama3", "factor": L / T, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": T, **_rope_kwargs(pe)}}


def _self_extend(pe, T, L):
    w = max(1, T // 2)
    # the farthest key of the last query sits at (L - 1) // G + W - W / G: at most T - 1
    g = max(1, math.ceil((L - 1 - w) / max(1, T - 1 - w)))
    return {"attention": {"extension": {"name": "self_extend", "group": g, "window": w}}}


def _string(pe, T, L):
    if L <= T:
        return {}                                                               # the trained model as it is
    w = max(1, T // 8)
    return {"attention": {"extension": {"name": "string", "shift": max(w, L - T + w), "window": w}}}


def _lm_infinite(pe, T, L):
    return {"attention": {"extension": {"name": "lm_infinite", "window": T, "n_global": 10, "limit_distance": T}}}


def _ms_poe(pe, T, L):
    if L <= T:
        return {}
    return {"attention": {"extension": {"name": "ms_poe"}}}


def _log_scale(pe, T, L):
    return {"attention": {"temperature": {"name": "log_length", "train_len": T}}}


def _alibi_interp(pe, T, L):
    kw = {"num_alibi_heads": pe.num_alibi_heads} if getattr(pe, "num_alibi_heads", None) else {}
    return {"pe": {"name": "alibi_interp", "factor": _s(T, L), **kw}}


def _always(pe) -> bool:
    return True


METHODS: Dict[str, ExtensionMethod] = {m.name: m for m in (
    ExtensionMethod("none", "the trained model unchanged", _always, lambda pe, T, L: {}),
    ExtensionMethod("pi", "Chen et al., Extending Context Window of Large Language Models via Positional "
                    "Interpolation, arXiv 2306.15595", _plain_rope, _pi),
    ExtensionMethod("ntk", "bloc97, NTK-Aware Scaled RoPE, r/LocalLLaMA 2023 (as analysed in Peng et al., YaRN, "
                    "arXiv 2309.00071, sec. 3.1)", _plain_or_base_rope, _ntk),
    ExtensionMethod("dynamic", "bloc97 & emozilla, Dynamically Scaled RoPE, 2023 (HF transformers 'dynamic')",
                    _plain_rope, _dynamic),
    ExtensionMethod("yarn", "Peng et al., YaRN: Efficient Context Window Extension of Large Language Models, "
                    "arXiv 2309.00071", _plain_rope, _yarn),
    ExtensionMethod("llama3", "Llama Team, The Llama 3 Herd of Models, arXiv 2407.21783", _plain_rope, _llama3),
    ExtensionMethod("self_extend", "Jin et al., LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning, "
                    "arXiv 2401.01325", _plain_rope, _self_extend),
    ExtensionMethod("string", "An et al., Why Does the Effective Context Length of LLMs Fall Short?, arXiv "
                    "2410.18745", _plain_rope, _string),
    ExtensionMethod("lm_infinite", "Han et al., LM-Infinite: Zero-Shot Extreme Length Generalization for Large "
                    "Language Models, arXiv 2308.16137", _plain_rope, _lm_infinite),
    ExtensionMethod("ms_poe", "Zhang et al., Found in the Middle: How Language Models Use Long Contexts Better via "
                    "Plug-and-Play Positional Encoding, arXiv 2403.04797", _plain_rope, _ms_poe),
    ExtensionMethod("log_scale", "Chiang & Cholak, arXiv 2202.12172; Zhang et al., Entropy-aware ABF, arXiv "
                    "2401.07004", _always, _log_scale),
    ExtensionMethod("alibi_interp", "Al-Khateeb et al., Position Interpolation Improves ALiBi Extrapolation, arXiv "
                    "2310.13017", _plain_alibi, _alibi_interp),
)}


def longrope_method(factors_file: Union[str, Path]) -> ExtensionMethod:
    """LongRoPE with the per-pair factors a search wrote (`zoo.longrope_search.SearchResult.save`)."""
    from .longrope_search import load_factors

    def build(pe, T, L):
        spec = load_factors(factors_file)
        if L <= T:
            return {"pe": {"name": "rope", **_rope_kwargs(pe)}}
        return {"pe": {"name": "rope_longrope", **spec, **{k: v for k, v in _rope_kwargs(pe).items() if k not in spec}}}

    return ExtensionMethod("longrope", "Ding et al., LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens, "
                           "arXiv 2402.13753", _plain_rope, build)


def fitting_methods(model: nn.Module) -> List[str]:
    """Names of the registered methods that fit ``model``'s encoding, in registry order."""
    return [n for n, m in METHODS.items() if m.fits(model)]


def resolve_methods(spec: str, model: nn.Module, longrope_file: Optional[Union[str, Path]] = None
                    ) -> List[ExtensionMethod]:
    """``--extend`` of the bench: ``"all"`` (every method that fits, plus LongRoPE when a factors file is given) or
    comma-separated names; a name that does not fit this model is skipped by the caller (`ExtensionMethod.fits`)."""
    table = dict(METHODS)
    if longrope_file is not None:
        table["longrope"] = longrope_method(longrope_file)
    if spec == "all":
        return [m for m in table.values() if m.fits(model)]
    out = []
    plain = {n.replace("_", ""): n for n in list(table) + ["longrope"]}       # selfextend = self_extend
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        name = plain.get(name.replace("_", "").replace("-", "").lower(), name)
        if name not in table:
            import difflib
            close = difflib.get_close_matches(name, list(table) + ["longrope"], n=3)
            hint = "longrope needs --longrope-factors FILE" if name == "longrope" else \
                (f"closest: {', '.join(close)}" if close else f"known: {', '.join(table)}")
            raise ConfigError(f"--extend: unknown method {name!r}; {hint}")
        out.append(table[name])
    if not out:
        raise ConfigError("--extend names no method")
    return out
