"""Which encodings a model can take: the positions a model provides against an encoding's positions kind.

    model family  --provides-->  positions kinds ("1d" | "2d" | "boxes" | ...) , causal?
    encoding      --zoo.pe.info(name)-->  positions kind, hooks, causal_ok

An encoding fits a model when its positions kind (`zoo.pe.info(name).positions`) is one the model provides.  A
causal model (a decoder with a KV cache) also takes encodings that are not ``causal_ok`` -- its full forward is
exact -- but refuses KV-cache decoding with them (their keys would change as the sequence grows: dynamic NTK,
LongRoPE's short/long switch, dynamic ALiBi interpolation, randomized positions).

Model families register themselves where they are defined (`register_family`), so `families` and the compatibility
table (``zoo pe --markdown``) name every family the installed domains bring, and `check_fit` is the one rule that
models call when they are given ``pe=``.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from torch import nn

__all__ = ["Family", "PEFitError", "register_family", "families", "family", "spec_name", "fit_reason", "check_fit",
           "needs_of", "KIND_FIELDS"]

#: positions kind -> the `Positions` fields an encoding of that kind reads unless its class says otherwise
#: (a class attribute ``reads``, e.g. BiPE's ``("segments",)``)
KIND_FIELDS: Dict[str, Tuple[str, ...]] = {"1d": ("ids",), "2d": ("grid",), "boxes": ("boxes",),
                                           "graph": ("boxes",), "multimodal": ("ids",)}


class PEFitError(ValueError):
    """An encoding whose positions kind the model does not provide."""


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family that takes ``pe=``: its name, the positions kinds it provides, whether it is causal (decoder
    with a KV cache), the registry pattern of its models and how it places an encoding (``note``)."""
    name: str
    positions: Tuple[str, ...]
    causal: bool
    models: str
    note: str = ""


_FAMILIES: Dict[str, Family] = {}


def register_family(name: str, *, positions: Tuple[str, ...], causal: bool, models: str, note: str = "") -> Family:
    """Declare a model family that takes ``pe=`` (called by the module that defines its models)."""
    from ..pe import POSITION_KINDS
    positions = tuple(positions)
    bad = [p for p in positions if p not in POSITION_KINDS]
    if not positions or bad:
        raise ValueError(f"positions of family {name!r} must be kinds of {POSITION_KINDS}, got {positions!r}")
    fam = Family(name, positions, bool(causal), models, note)
    _FAMILIES[name] = fam
    return fam


def families() -> List[Family]:
    """Registered families (those of the installed domains once their models are imported), in registration
    order."""
    return list(_FAMILIES.values())


def family(name: str) -> Family:
    if name not in _FAMILIES:
        raise KeyError(f"unknown model family {name!r}; registered: {', '.join(_FAMILIES) or 'none'}")
    return _FAMILIES[name]


def spec_name(spec: Union[str, Mapping[str, Any]]) -> str:
    """The registered name of a spec (``"rope"`` or ``{"name": "rope", ...}``)."""
    if isinstance(spec, str):
        return spec
    if type(spec).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        return spec["name"]
    from ..pe import PEConfigError
    raise PEConfigError(f"pe must be a registered encoding name or a mapping {{'name': ..., **kwargs}}, got "
                        f"{type(spec).__name__} {spec!r}")


def fit_reason(name: str, positions: Tuple[str, ...]) -> Optional[str]:
    """None when the encoding ``name`` fits a model providing ``positions``; else why not."""
    from ..pe import info
    kind = info(name).positions
    if kind in positions:
        return None
    return (f"encoding {name!r} reads {kind!r} positions (zoo.pe.info({name!r}).positions) but the model provides "
            f"{' / '.join(repr(p) for p in positions)} positions")


def check_fit(spec: Union[str, Mapping[str, Any]], *, model: str, positions: Tuple[str, ...], causal: bool):
    """The `zoo.pe.PEInfo` of ``spec`` if it fits ``model`` (a name for messages) that provides ``positions``;
    raises `PEFitError` naming both positions kinds and the encodings that would fit.  A causal model given an
    encoding that is not ``causal_ok`` gets a ``UserWarning``: it builds, but refuses KV-cache decoding."""
    from ..pe import info, list_pe
    name = spec_name(spec)
    meta = info(name)                                            # unknown names: the close-name error
    reason = fit_reason(name, positions)
    if reason is not None:
        fits = [n for p in positions for n in list_pe(positions=p)]
        raise PEFitError(f"{model}: {reason}; encodings that fit: {', '.join(fits)}")
    if causal and not meta.causal_ok:
        warnings.warn(f"{model}: encoding {name!r} is not causal_ok (its keys change as the sequence grows), so "
                      f"this decoder refuses KV-cache decoding; the full forward and generate(use_cache=False) are "
                      f"exact", UserWarning, stacklevel=3)
    return meta


def needs_of(pe: Optional[nn.Module], kind: str = "1d") -> Tuple[str, ...]:
    """The `Positions` fields a built encoding reads: its class's ``reads`` if it has one, else `KIND_FIELDS`
    of ``kind``; ``()`` for None or an encoding without hooks (NoPE)."""
    if pe is None:
        return ()
    reads = getattr(pe, "reads", None)
    if reads is not None:
        return tuple(reads)
    hooks = [getattr(pe, h, False) for h in ("has_embed", "has_rotate", "has_bias", "needs_weights")]
    return KIND_FIELDS[kind] if any(hooks) else ()

