"""Model registry: name -> builder, pretrained cfgs and checkpoint filter.

Conventions follow timm: an entrypoint is a function ``fn(**kwargs) -> nn.Module`` registered under its name;
``name.tag`` picks one of its pretrained cfgs (the first tag is the default). Domains register their models in
``domains/<domain>/models.py``; those modules are imported the first time the registry is asked about models, so
``import zoo`` never pulls in a domain's heavy dependencies. Vision entrypoints are also registered with timm.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

from torch import nn

from .errors import CheckpointError, UnknownModelError

__all__ = ["PretrainedCfg", "register_model", "create", "list_models", "model_info", "load_checkpoint",
           "split_tag", "DOMAIN_MODULES"]

# domain model modules, imported lazily (their top level imports torch and zoo only)
DOMAIN_MODULES: Dict[str, List[str]] = {
    "vision": ["domains.vision.models", "domains.vision.cpvt", "domains.vision.rmt", "domains.vision.rope_vit",
               "domains.vision.lightnet", "domains.vision.detr"],
    "code": ["domains.code.models"],
    "documents": ["domains.documents.models"],
    "genomics": ["domains.genomics.models"],
}


@dataclass
class PretrainedCfg:
    """Where a pretrained checkpoint lives and what it is.

    ``url`` / ``hf_hub_id`` (+ ``filename``) / ``file`` are sources; ``sha256`` is verified when given."""
    url: Optional[str] = None
    hf_hub_id: Optional[str] = None
    filename: Optional[str] = None
    file: Optional[str] = None
    sha256: Optional[str] = None
    license: Optional[str] = None
    paper: Optional[str] = None
    source: Optional[str] = None
    num_classes: Optional[int] = None
    input_size: Optional[tuple] = None
    mean: Optional[tuple] = None
    std: Optional[tuple] = None
    notes: Optional[str] = None
    metrics: Dict[str, float] = field(default_factory=dict)

    @property
    def has_weights(self) -> bool:
        return bool(self.url or self.hf_hub_id or self.file)

    def source_string(self) -> Optional[str]:
        if self.file:
            return self.file
        if self.url:
            return self.url
        if self.hf_hub_id:
            return f"hf-hub:{self.hf_hub_id}" + (f"/{self.filename}" if self.filename else "")
        return None


@dataclass
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    domain: str
    cfgs: Dict[str, PretrainedCfg]
    filter_fn: Optional[Callable[[dict, nn.Module], dict]]
    paper: Optional[str] = None

    @property
    def default_tag(self) -> Optional[str]:
        return next(iter(self.cfgs), None)


_REGISTRY: Dict[str, ModelEntry] = {}
_DOMAINS_LOADED: set = set()


def register_model(fn: Optional[Callable] = None, *, name: Optional[str] = None, domain: Optional[str] = None,
                   cfgs: Optional[Dict[str, PretrainedCfg]] = None, filter_fn: Optional[Callable] = None,
                   paper: Optional[str] = None, timm: Optional[bool] = None):
    """Register an entrypoint. Usable bare (``@register_model``) or with options.

    ``domain`` defaults to the second part of the module name (``domains.vision.models`` -> ``vision``).
    ``timm`` (default: True for vision) also registers the entrypoint with timm's registry."""

    def deco(f: Callable) -> Callable:
        model_name = name or f.__name__
        parts = f.__module__.split(".")
        dom = domain or (parts[1] if len(parts) > 1 and parts[0] == "domains" else "core")
        if model_name in _REGISTRY and _REGISTRY[model_name].fn is not f:
            raise ValueError(f"model name {model_name!r} is already registered by "
                             f"{_REGISTRY[model_name].fn.__module__}")
        _REGISTRY[model_name] = ModelEntry(model_name, f, dom, dict(cfgs or {}), filter_fn, paper)
        if timm if timm is not None else dom == "vision":
            _register_with_timm(model_name)
        return f

    return deco(fn) if fn is not None else deco


def _register_with_timm(model_name: str) -> None:
    try:
        from timm.models import _registry as timm_registry
    except ImportError:  # timm is optional outside vision
        return
    if model_name in timm_registry._model_entrypoints:
        if getattr(timm_registry._model_entrypoints[model_name], "_zoo_name", None) == model_name:
            return
        raise ValueError(f"zoo model name {model_name!r} collides with a timm model name")

    def entry(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kw):
        return create(model_name, pretrained=pretrained, **kw)

    entry.__name__ = model_name
    entry.__qualname__ = model_name
    entry.__module__ = "zoo.timm_models"
    entry._zoo_name = model_name
    if "zoo.timm_models" not in sys.modules:
        import types
        sys.modules["zoo.timm_models"] = types.ModuleType("zoo.timm_models")
    timm_registry.register_model(entry)


def _load_domains(domains=None) -> None:
    for dom, mods in DOMAIN_MODULES.items():
        if (domains is None or dom in domains) and dom not in _DOMAINS_LOADED:
            for mod in mods:
                importlib.import_module(mod)
            _DOMAINS_LOADED.add(dom)


def split_tag(name: str):
    """``"vit_irpe_small.in1k"`` -> ``("vit_irpe_small", "in1k")``; no tag -> ``(name, None)``."""
    base, _, tag = name.partition(".")
    return base, (tag or None)


def _entry(name: str) -> ModelEntry:
    _load_domains()
    base, _ = split_tag(name)
    if base not in _REGISTRY:
        close = difflib.get_close_matches(base, list(_REGISTRY), n=5, cutoff=0.5)
        if not close:
            close = [n for n in _REGISTRY if base.split("_")[0] in n][:5]
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint}. `zoo list` shows all {len(_REGISTRY)} models")
    return _REGISTRY[base]


def _resolve_cfg(entry: ModelEntry, tag: Optional[str]) -> Optional[PretrainedCfg]:
    if tag is None:
        return entry.cfgs.get(entry.default_tag) if entry.cfgs else None
    if tag not in entry.cfgs:
        tags = ", ".join(f"{entry.name}.{t}" for t in entry.cfgs) or "none"
        raise UnknownModelError(f"unknown pretrained tag {tag!r} for {entry.name}; available: {tags}")
    return entry.cfgs[tag]


def create(name: str, pretrained: bool = False, pretrained_file: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: model name, optionally with a pretrained tag (``vit_irpe_small.in1k``).
        pretrained: load the tag's released weights (downloaded once, verified, cached; ``ZOO_OFFLINE=1`` uses
            the cache only).
        pretrained_file: load weights from a local file or any source ``zoo.hub.resolve`` accepts, through the
            family's checkpoint filter (foreign formats, resampled position tables, dropped mismatched heads).
        **kwargs: passed to the model builder (e.g. ``img_size``, ``num_classes``, ``depth``).
    """
    entry = _entry(name)
    _, tag = split_tag(name)
    cfg = _resolve_cfg(entry, tag)
    model = entry.fn(**kwargs)
    model.pretrained_cfg = cfg
    model.zoo_name = entry.name
    source = pretrained_file
    sha256 = None
    if pretrained and source is None:
        if cfg is None or not cfg.has_weights:
            raise UnknownModelError(f"{entry.name} has no pretrained weights; "
                                    f"`zoo list --pretrained` shows the models that do")
        source, sha256 = cfg.source_string(), cfg.sha256
    if source is not None:
        from . import hub
        sd = hub.load_state_dict(source, sha256=sha256,
                                 filename=cfg.filename if (cfg is not None and pretrained_file is None) else None)
        if entry.filter_fn is not None:
            sd = entry.filter_fn(sd, model)
        load_checkpoint(model, sd, source=str(source))
    return model


def load_checkpoint(model: nn.Module, state_dict: dict, source: str = "checkpoint", strict: bool = True) -> None:
    """Load ``state_dict`` into ``model``, naming every missing, unexpected or mis-shaped key in the error."""
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise CheckpointError(f"{source}: expected a state dict (str -> tensor), got {type(state_dict).__name__}")
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and hasattr(state_dict[k], "shape")
             and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:12])}" + (" ..." if len(missing) > 12 else ""))
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:12])}"
                        + (" ..." if len(unexpected) > 12 else ""))
    if shape:
        problems.append(f"shape mismatch ({len(shape)}): {'; '.join(shape[:8])}")
    if problems:
        raise CheckpointError(f"cannot load {source} into {type(model).__name__}: " + " | ".join(problems))
    model.load_state_dict(state_dict, strict=strict)


def list_models(pattern: str = "*", pretrained: bool = False, domain: Optional[str] = None) -> List[str]:
    """Registered model names matching a shell-style ``pattern``; with ``pretrained=True``, ``name.tag`` entries
    that have released weights."""
    _load_domains()
    out = []
    for name in sorted(_REGISTRY):
        e = _REGISTRY[name]
        if domain is not None and e.domain != domain:
            continue
        if pretrained:
            out += [f"{name}.{t}" for t, c in e.cfgs.items()
                    if c.has_weights and (fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(f"{name}.{t}", pattern))]
        elif fnmatch.fnmatch(name, pattern):
            out.append(name)
    return out


def count_params(entry_or_name, **kwargs) -> int:
    """Parameter count of a model built with default arguments, on the meta device (no memory, no init)."""
    entry = entry_or_name if isinstance(entry_or_name, ModelEntry) else _entry(entry_or_name)
    return sum(p.numel() for p in _build_meta(entry, **kwargs).parameters())


def _build_meta(entry: ModelEntry, **kwargs) -> nn.Module:
    import torch

    try:
        with torch.device("meta"):
            return entry.fn(**kwargs)
    except Exception:  # a builder that cannot run on meta: build on the CPU
        return entry.fn(**kwargs)


def model_info(name: str) -> Dict[str, Any]:
    """What a model is: domain, doc, parameters, default geometry and pretrained sources."""
    entry = _entry(name)
    _, tag = split_tag(name)
    model = _build_meta(entry)
    doc = (entry.fn.__doc__ or "").strip().splitlines()
    info = {
        "name": entry.name,
        "domain": entry.domain,
        "description": doc[0] if doc else "",
        "paper": entry.paper,
        "params": sum(p.numel() for p in model.parameters()),
        "config": dict(getattr(model, "config", {}) or {}),
        "pretrained": {t: {k: v for k, v in asdict(c).items() if v not in (None, {}, ())}
                       for t, c in entry.cfgs.items() if tag is None or t == tag},
    }
    return info
