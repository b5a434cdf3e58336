"""Model registry: name -> builder, pretrained cfgs and checkpoint filter.

Conventions follow timm: an entrypoint is a function ``fn(**kwargs) -> nn.Module`` registered under its name;
``name.tag`` picks one of its pretrained cfgs (the first tag is the default). Plugins (`zoo.plugins`) declare the
modules that register their models; those modules are imported the first time the registry is asked about models,
so ``import zoo`` never pulls in a plugin's heavy dependencies. The models of a plugin declared with ``timm`` are
also registered with timm.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import numbers
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, UnknownArgumentError, UnknownModelError, WeightsError, ZooError

__all__ = ["PretrainedCfg", "register_model", "create", "list_models", "model_info", "load_checkpoint",
           "split_tag"]


@dataclass
class PretrainedCfg:
    """Where a pretrained checkpoint lives and what it is.

    ``url`` / ``hf_hub_id`` (+ ``filename``) / ``file`` are sources; ``sha256`` is verified when given. An
    ``hf_hub_id`` without ``filename`` names a folder published by ``zoo export`` / ``zoo push`` (``config.json`` +
    ``model.safetensors``): ``pretrained=True`` rebuilds the model from its ``config.json`` (`zoo.publish`).

    ``published=False`` marks weights that are registered ahead of their upload (a recipe's run, `zoo.publish`):
    the source says where they will be, but nothing can be fetched yet, so ``has_weights`` is False, the tag is
    left out of ``list_models(pretrained=True)`` and ``pretrained=True`` says how to produce the weights.
    ``recipe``: the fine-tune recipe that trains them (``configs/<domain>/<recipe>.yaml``)."""
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
    published: bool = True
    recipe: Optional[str] = None

    @property
    def has_source(self) -> bool:
        """A source is named (fetchable or not)."""
        return bool(self.url or self.hf_hub_id or self.file)

    @property
    def has_weights(self) -> bool:
        """Weights that can be fetched: a source is named and they are published."""
        return self.has_source and self.published

    @property
    def is_folder(self) -> bool:
        """The source is a published zoo folder (``config.json`` + ``model.safetensors`` on the Hugging Face Hub)."""
        return bool(self.hf_hub_id and not self.filename and not self.url and not self.file)

    def source_string(self) -> Optional[str]:
        """The source as one string `zoo.hub.resolve` understands without ``filename=`` for hf-hub ids (the file is
        part of it); a ``url`` or ``file`` source takes ``filename`` separately."""
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
    timm_cfg: Dict[str, Any] = field(default_factory=dict)

    @property
    def default_tag(self) -> Optional[str]:
        """The first tag, unpublished ones excepted (a model whose only tags are unpublished has no default)."""
        return next((t for t, c in self.cfgs.items() if c.published), None)


_REGISTRY: Dict[str, ModelEntry] = {}


def register_model(fn: Optional[Callable] = None, *, name: Optional[str] = None, domain: Optional[str] = None,
                   cfgs: Optional[Dict[str, PretrainedCfg]] = None, filter_fn: Optional[Callable] = None,
                   paper: Optional[str] = None, timm: Optional[bool] = None,
                   timm_cfg: Optional[Dict[str, Any]] = None):
    """Register an entrypoint. Usable bare (``@register_model``) or with options.

    ``domain`` defaults to the name of the plugin whose package holds the entrypoint's module ("core" outside
    every plugin). ``timm`` (default: the plugin's ``timm`` flag) also registers the entrypoint with timm's
    registry, with a timm pretrained cfg per tag (`pretrained_cfg_dict`; a model without tags gets one too).
    ``timm_cfg``: the timm pretrained-cfg fields every tag shares (``input_size``, ``crop_pct``,
    ``interpolation``, ``first_conv``, ``classifier``, ``fixed_input_size``, ...); a tag's own values win."""

    def deco(f: Callable) -> Callable:
        from .plugins import plugin_of_module

        model_name = name or f.__name__
        plugin = plugin_of_module(f.__module__)
        dom = domain or (plugin.name if plugin is not None else "core")
        if model_name in _REGISTRY and _REGISTRY[model_name].fn is not f:
            raise ValueError(f"model name {model_name!r} is already registered by "
                             f"{_REGISTRY[model_name].fn.__module__}")
        bad = sorted(set(timm_cfg or {}) - set(TIMM_CFG_FIELDS))
        if bad:
            raise ValueError(f"{model_name}: timm_cfg keys {bad} are not timm pretrained-cfg fields")
        all_cfgs = dict(cfgs or {})
        if plugin is not None:                      # the tags of the plugin's recipes (`zoo.publish.recipe_cfgs`)
            from .publish import recipe_cfgs
            for tag, cfg in recipe_cfgs().get(model_name, {}).items():
                if tag in all_cfgs:
                    raise ValueError(f"{model_name}: the tag {tag!r} of recipe {cfg.recipe} is also a declared tag")
                all_cfgs[tag] = cfg
        _REGISTRY[model_name] = ModelEntry(model_name, f, dom, all_cfgs, filter_fn, paper, dict(timm_cfg or {}))
        if timm if timm is not None else (plugin is not None and plugin.timm):
            _register_with_timm(model_name)
        return f

    return deco(fn) if fn is not None else deco


#: the fields of timm's ``PretrainedCfg`` (timm 1.0): what ``timm_cfg`` may set and what timm is given
TIMM_CFG_FIELDS = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag", "custom_load",
                   "input_size", "test_input_size", "min_input_size", "fixed_input_size", "interpolation", "crop_pct",
                   "test_crop_pct", "crop_mode", "mean", "std", "num_classes", "label_offset", "label_names",
                   "label_descriptions", "pool_size", "test_pool_size", "first_conv", "classifier", "license",
                   "description", "origin_url", "paper_name", "paper_ids", "notes")


def _paper_ids(paper: Optional[str]) -> Optional[str]:
    """``"arXiv:2012.12877"`` for an arXiv address or id, else the reference as given."""
    if not paper:
        return None
    m = re.search(r"arxiv\.org/(?:abs|pdf)/(\d{4}\.\d{4,5})|arxiv[:\s]*(\d{4}\.\d{4,5})", paper, re.I)
    return f"arXiv:{m.group(1) or m.group(2)}" if m else paper


def pretrained_cfg_dict(name: str) -> Dict[str, Any]:
    """The pretrained cfg of ``name`` (``model`` or ``model.tag``; no tag: the default tag) as timm writes it: the
    model's ``timm_cfg`` fields, then the tag's (source, license, paper, classes, input size, mean, std), with
    ``architecture`` and ``tag``; zoo's own fields (``sha256``, ``metrics``, ``source`` as ``origin_url`` when it is
    an address) ride along.  A model without tags gets the shared fields and its paper."""
    return _cfg_dict(_entry(name), split_tag(name)[1])


def _cfg_dict(entry: ModelEntry, tag: Optional[str]) -> Dict[str, Any]:
    """`pretrained_cfg_dict` of a registry entry (no plugin is imported)."""
    cfg = _resolve_cfg(entry, tag)
    out: Dict[str, Any] = dict(entry.timm_cfg)
    out.update(architecture=entry.name, tag=tag or (entry.default_tag if cfg is not None else None))
    if cfg is not None:
        own = {"url": cfg.url, "hf_hub_id": cfg.hf_hub_id, "file": cfg.file, "license": cfg.license,
               "num_classes": cfg.num_classes, "input_size": tuple(cfg.input_size) if cfg.input_size else None,
               "mean": tuple(cfg.mean) if cfg.mean else None, "std": tuple(cfg.std) if cfg.std else None,
               "notes": cfg.notes, "sha256": cfg.sha256, "metrics": dict(cfg.metrics) or None,
               "recipe": cfg.recipe, "published": None if cfg.published else False}
        if cfg.hf_hub_id and cfg.filename:
            own["hf_hub_filename"] = cfg.filename
        if cfg.source and re.match(r"https?://", cfg.source):
            own["origin_url"] = cfg.source
        elif cfg.source:
            own["description"] = cfg.source
        out.update({k: v for k, v in own.items() if v is not None})
    paper = _paper_ids((cfg.paper if cfg is not None else None) or entry.paper)
    if paper:
        out.setdefault("paper_ids", paper)
    return out


def _timm_default_cfgs(entry: ModelEntry) -> Dict[str, Dict[str, Any]]:
    """``{"name.tag": cfg}`` (``{"name": cfg}`` without tags) of timm's fields, for ``generate_default_cfgs``.
    Unpublished tags are not given to timm: nothing can be fetched for them (``timm.create_model("name.tag")`` still
    reaches zoo's entrypoint, which says so)."""
    tags = [t for t, c in entry.cfgs.items() if c.published] or [None]
    return {f"{entry.name}.{t}" if t else entry.name:
            {f: v for f, v in _cfg_dict(entry, t).items() if f in TIMM_CFG_FIELDS and f not in ("architecture", "tag")}
            for t in tags}


def _timm_tag(pretrained_cfg: Any) -> Optional[str]:
    """The tag in what ``timm.create_model`` passes as ``pretrained_cfg``: a tag str (from ``"model.tag"``), a dict
    or a timm ``PretrainedCfg``, or None."""
    if isinstance(pretrained_cfg, str):
        return pretrained_cfg or None
    if isinstance(pretrained_cfg, Mapping):
        return pretrained_cfg.get("tag")
    return getattr(pretrained_cfg, "tag", None)


def _timm_folder(pretrained_cfg: Any) -> Optional[str]:
    """``"local-dir:DIR"`` / ``"hf-hub:org/name[@rev]"`` when timm read ``pretrained_cfg`` from a published folder's
    ``config.json`` (``timm.create_model("local-dir:DIR")``: timm's ``source`` field says which), else None."""
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        return None
    fields = pretrained_cfg if isinstance(pretrained_cfg, Mapping) else {
        k: getattr(pretrained_cfg, k, None) for k in ("source", "file", "hf_hub_id")}
    source = fields.get("source")
    if source == "local-dir" and fields.get("file"):
        return f"local-dir:{fields['file']}"
    if source == "hf-hub" and fields.get("hf_hub_id"):
        return f"hf-hub:{fields['hf_hub_id']}"
    return None


#: the ``timm.create_model`` keywords that go with ``features_only=True`` (to `_feature_net`, not to the builder)
_FEATURE_KWARGS = ("out_indices", "feature_cls", "output_fmt", "feature_cfg")


def _feature_net(model: nn.Module, name: str, out_indices: Any = 3, feature_cls: Optional[str] = None,
                 output_fmt: str = "NCHW", feature_cfg: Optional[Dict[str, Any]] = None) -> nn.Module:
    """``timm.create_model(name, features_only=True)``: timm's ``FeatureGetterNet`` over the model's
    ``forward_intermediates`` (the blocks after the last index taken are pruned), as timm builds its ViTs."""
    cfg = dict(feature_cfg or {})
    out_indices = cfg.pop("out_indices", out_indices)
    feature_cls = cfg.pop("feature_cls", feature_cls) or "getter"
    if not hasattr(model, "forward_intermediates"):
        raise UnknownArgumentError(f"{name}: features_only=True needs a model with forward_intermediates (the "
                                   f"vision classifiers); {type(model).__name__} has none")
    if feature_cls != "getter":
        raise UnknownArgumentError(f"{name}: features_only=True takes feature_cls='getter', got {feature_cls!r}")
    from timm.models._builder import pretrained_cfg_for_features
    from timm.models._features import FeatureGetterNet
    net = FeatureGetterNet(model, out_indices=out_indices, output_fmt=output_fmt, **cfg)
    if isinstance(getattr(model, "pretrained_cfg", None), dict):  # as timm: the cfg without the classifier's keys
        net.pretrained_cfg = net.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    return net


def _timm_scriptable() -> bool:
    """timm's ``set_scriptable(True)`` / ``create_model(..., scriptable=True)`` is in force."""
    from timm.layers import is_scriptable
    return is_scriptable()


def _register_with_timm(model_name: str) -> None:
    try:
        from timm.models import _registry as timm_registry
        from timm.models import generate_default_cfgs
    except ImportError:  # timm is optional outside vision
        return
    if model_name in timm_registry._model_entrypoints:
        if getattr(timm_registry._model_entrypoints[model_name], "_zoo_name", None) == model_name:
            return
        raise ValueError(f"zoo model name {model_name!r} collides with a timm model name")

    def entry(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kw):
        overlay = dict(pretrained_cfg_overlay or {})
        kw.pop("pretrained_model_args", None)               # timm's copy of config.json's model_args (already in kw)
        folder = _timm_folder(pretrained_cfg)
        if folder is not None:                              # timm.create_model("local-dir:DIR" / "hf-hub:org/name")
            from .publish import load
            model = load(folder, pretrained=bool(pretrained), architecture=model_name, **kw)
        else:
            tag = _timm_tag(pretrained_cfg)
            if pretrained and overlay.get("file"):          # timm's way to load a local file
                kw.setdefault("pretrained_file", overlay["file"])
                pretrained = False
            model = create(f"{model_name}.{tag}" if tag else model_name, pretrained=pretrained, **kw)
        if overlay:                                         # a features_only extractor keeps the model as .model
            for m in (model, model.model) if kw.get("features_only") else (model,):
                m.pretrained_cfg = m.default_cfg = {**m.pretrained_cfg, **overlay}
        if not kw.get("features_only") and _timm_scriptable() and hasattr(model, "__prepare_scriptable__"):
            model = model.__prepare_scriptable__()          # timm's set_scriptable(True): the TorchScript form
        return model

    entry.__name__ = model_name
    entry.__qualname__ = model_name
    entry.__module__ = "zoo.timm_models"
    entry._zoo_name = model_name
    if "zoo.timm_models" not in sys.modules:
        import types
        sys.modules["zoo.timm_models"] = types.ModuleType("zoo.timm_models")
    module = sys.modules["zoo.timm_models"]
    if not hasattr(module, "default_cfgs"):
        module.default_cfgs = {}
    module.default_cfgs.update(generate_default_cfgs(_timm_default_cfgs(_REGISTRY[model_name])))
    timm_registry.register_model(entry)


def _load_plugins() -> None:
    from .plugins import import_models
    import_models()


def split_tag(name: str):
    """``"vit_irpe_small.in1k"`` -> ``("vit_irpe_small", "in1k")``; no tag -> ``(name, None)``."""
    base, _, tag = name.partition(".")
    return base, (tag or None)


def _entry(name: str) -> ModelEntry:
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a str such as 'vit_irpe_small' or 'vit_irpe_small.in1k', "
                          f"got {type(name).__name__} {name!r}")
    _load_plugins()
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


# geometry arguments many builders share: each must be an integer (not a bool, a float or a str) of at least this
_INT_KWARGS = {"depth": 1, "num_heads": 1, "embed_dim": 1, "dim": 1, "hidden_dim": 1, "nheads": 1, "in_chans": 1,
               "vocab_size": 1, "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 1, "num_queries": 1,
               "max_seq_len": 1, "num_classes": 0}
_OPTIONAL_INT_KWARGS = ("num_classes",)           # None: a model without a classification head, where supported
_SIZE_KWARGS = ("img_size", "patch_size")          # an integer or an (h, w) pair of integers, at least 1
_RATE_KWARGS = ("drop_rate", "attn_drop_rate", "drop_path_rate", "proj_drop_rate", "pos_drop_rate", "dropout",
                "drop", "attn_drop", "drop_path", "head_drop")   # a real number in [0, 1)
_RATIO_KWARGS = ("mlp_ratio",)                     # a positive real number


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_kwargs(entry: ModelEntry, kwargs: Dict[str, Any]) -> None:
    """Integer geometry arguments, checked before anything is built."""
    for k, v in kwargs.items():
        if k in _INT_KWARGS:
            if v is None and k in _OPTIONAL_INT_KWARGS:
                continue
            if not _is_int(v) or v < _INT_KWARGS[k]:
                least = "a positive" if _INT_KWARGS[k] == 1 else "a non-negative"
                raise ConfigError(f"{k} must be {least} integer for {entry.name}, got {type(v).__name__} {v!r}")
        elif k in _SIZE_KWARGS:
            pair = isinstance(v, (tuple, list)) or (isinstance(v, Sequence) and not isinstance(v, (str, bytes)))
            values = list(v) if pair else [v]
            if (pair and len(values) != 2) or not all(_is_int(x) and x >= 1 for x in values):
                raise ConfigError(f"{k} must be a positive integer or an (h, w) pair of them for {entry.name}, "
                                  f"got {type(v).__name__} {v!r}")
        elif k in _RATE_KWARGS or k in _RATIO_KWARGS:
            real = isinstance(v, numbers.Real) and not isinstance(v, bool)
            if not real or not (0 <= v < 1 if k in _RATE_KWARGS else 0 < v < float("inf")):
                want = "a number in [0, 1)" if k in _RATE_KWARGS else "a positive number"
                raise ConfigError(f"{k} must be {want} for {entry.name}, got {type(v).__name__} {v!r}")


def _accepted_kwargs(entry: ModelEntry) -> str:
    """The keywords the entrypoint and the class it builds name in their signatures (best effort)."""
    names: List[str] = []
    where = entry.name
    for fn in (entry.fn, None):
        try:
            if fn is None:
                cls = type(_build_meta(entry))
                fn, where = cls.__init__, cls.__name__
            params = inspect.signature(fn).parameters.values()
        except Exception:  # a builder that cannot be built or inspected: nothing to list
            continue
        names += [p.name for p in params if p.name != "self" and p.name not in names
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return f"{where} accepts: {', '.join(names)}" if names else ""


def _build(entry: ModelEntry, kwargs: Dict[str, Any]) -> nn.Module:
    _check_kwargs(entry, kwargs)
    try:
        return entry.fn(**kwargs)
    except (TypeError, AttributeError, ValueError) as e:
        if not kwargs or isinstance(e, ZooError):
            raise
        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if m and m.group(1) in kwargs:
            accepted = _accepted_kwargs(entry)
            close = difflib.get_close_matches(m.group(1), re.findall(r"\w+", accepted.partition(":")[2]), n=3)
            hint = (f"; did you mean {', '.join(close)}?" if close else "") + (f"; {accepted}" if accepted else "")
            raise UnknownArgumentError(f"unknown keyword argument {m.group(1)!r} for {entry.name}{hint}") from None
        if any(re.search(rf"\b{re.escape(k)}\b", str(e)) for k in kwargs):
            raise                                    # the builder's own check, naming the argument already
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ConfigError(f"cannot build {entry.name} with {args}: {type(e).__name__}: {e}") from e


def _state_dict_of(obj: Any) -> Any:
    """The state dict inside a checkpoint as the filters unwrap it (``{'model': sd}``, ``{'state_dict': sd}``,
    ``{'model_ema': sd}``), else the checkpoint itself."""
    for key in ("model", "state_dict", "model_ema"):
        inner = obj.get(key) if isinstance(obj, Mapping) else None
        if isinstance(inner, Mapping) and inner:
            return inner
    return obj


def _check_entries(state_dict: Any, source: str, into: str) -> None:
    """Name the first key that is not a str or value that is not a tensor."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"cannot load {source} into {into}: expected a state dict (str -> tensor), "
                              f"got {type(state_dict).__name__}")
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise CheckpointError(f"state dict key {k!r} is a {type(k).__name__}, not a str: cannot load {source} "
                                  f"into {into}")
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor: cannot load "
                                  f"{source} into {into}")


def _device_dtype(name: str, device: Any, dtype: Any):
    """``(torch.device or None, floating torch.dtype or None)``; ConfigError naming the argument otherwise."""
    dev = None
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"device must be a torch.device or a device string such as 'cpu', 'cuda:0' or "
                              f"'meta' for {name}, got {device!r} ({str(e).splitlines()[0]})") from None
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigError(f"dtype must be a floating torch.dtype (torch.float32, torch.bfloat16, ...) for {name}, "
                          f"got {dtype!r}")
    return dev, dtype


class _PretrainedDefault:
    """The default of ``create(pretrained=)``: False for a registered name, True for a published folder."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "False (True for a local-dir: / hf-hub: folder)"


_PRETRAINED_DEFAULT = _PretrainedDefault()
#: the name prefixes of a published folder (`zoo.publish`): ``create("local-dir:DIR")``, ``create("hf-hub:org/name")``
FOLDER_PREFIXES = ("local-dir:", "hf-hub:")


def create(name: str, pretrained: bool = _PRETRAINED_DEFAULT, pretrained_file: Optional[str] = None,
           device: Any = None, dtype: Optional[torch.dtype] = None, **kwargs) -> nn.Module:
    """Build a registered model, or the model of a published folder.

    Args:
        name: model name, optionally with a pretrained tag (``vit_irpe_small.in1k``); or a folder written by
            ``zoo export`` (``local-dir:DIR``) or pushed by ``zoo push`` (``hf-hub:org/name[@revision]``): the model
            is rebuilt from its ``config.json`` (architecture and ``model_args``; ``kwargs`` given here win, e.g.
            ``drop_rate``; an architecture-changing one such as ``num_classes`` goes through the family's checkpoint
            filter like ``pretrained_file`` does) and its ``model.safetensors`` is loaded (see `zoo.publish.load`).
        pretrained: load the tag's released weights (downloaded once, verified, cached; ``ZOO_OFFLINE=1`` uses
            the cache only). A tag registered ahead of its upload (``published=False``) raises a WeightsError
            that says how to produce the weights. For a folder the default is True (False: the architecture only).
        pretrained_file: load weights from a local file or any source ``zoo.hub.resolve`` accepts, through the
            family's checkpoint filter (foreign formats, resampled position tables, dropped mismatched heads).
        device: build the model there (``"meta"``: shapes only, no memory; weights cannot be loaded into it);
            every parameter and buffer ends on it. Default: the current default device (CPU).
        dtype: the floating dtype of every floating parameter and buffer (as ``model.to(dtype)``); weights load
            cast to it. Positional encodings compute their angles in float32 whatever this is.
        **kwargs: passed to the model builder (e.g. ``img_size``, ``num_classes``, ``depth``); the common integer
            geometry arguments are checked first, and an unknown keyword raises `UnknownArgumentError` (a
            `ConfigError` and a TypeError) naming it. ``features_only=True`` (with ``out_indices``,
            ``output_fmt``) returns timm's feature extractor over the model's ``forward_intermediates`` (a model
            with that method; timm installed), as ``timm.create_model`` does.
    """
    if isinstance(name, str) and name.startswith(FOLDER_PREFIXES):
        from .publish import load
        if pretrained_file is not None:
            raise ConfigError(f"pretrained_file for {name}: a published folder brings its own weights "
                              f"(pretrained=False builds the architecture only)")
        return load(name, pretrained=True if pretrained is _PRETRAINED_DEFAULT else pretrained, device=device,
                    dtype=dtype, **kwargs)
    if pretrained is _PRETRAINED_DEFAULT:
        pretrained = False
    entry = _entry(name)
    dev, dtype = _device_dtype(entry.name, device, dtype)
    features_only = kwargs.pop("features_only", False)
    feature_kw = {k: kwargs.pop(k) for k in _FEATURE_KWARGS if k in kwargs}
    if feature_kw and not features_only:
        raise UnknownArgumentError(f"{', '.join(feature_kw)} for {entry.name} only go with features_only=True")
    _, tag = split_tag(name)
    cfg = _resolve_cfg(entry, tag)
    if pretrained not in (True, False):
        raise ConfigError(f"pretrained must be True or False for {entry.name}, got {type(pretrained).__name__} "
                          f"{pretrained!r}")
    if pretrained_file is not None and not isinstance(pretrained_file, (str, os.PathLike)):
        raise ConfigError(f"pretrained_file must be a path or a source string for {entry.name}, got "
                          f"{type(pretrained_file).__name__} {pretrained_file!r}")
    if dev is not None and dev.type == "meta" and (pretrained or pretrained_file is not None):
        raise ConfigError(f"cannot load weights into {entry.name} on the meta device (it holds no values): build it "
                          f"on a real device, or drop pretrained / pretrained_file")
    if pretrained and pretrained_file is None and cfg is not None and not cfg.published:
        from .publish import unpublished_message
        raise WeightsError(unpublished_message(f"{entry.name}.{tag}", cfg))
    if pretrained and pretrained_file is None and cfg is not None and cfg.is_folder:
        from .publish import load_tag                 # rebuilt from the folder's config.json
        return load_tag(entry.name, tag or entry.default_tag, cfg, device=device, dtype=dtype,
                        features_only=features_only, **feature_kw, **kwargs)
    if dev is None:
        model = _build(entry, kwargs)
    else:
        with dev:                                     # allocate on the device, not on CPU first
            model = _build(entry, kwargs)
        model.to(device=dev)                          # what a builder put on an explicit device
    if dtype is not None:
        model.to(dtype=dtype)
    model.pretrained_cfg = _cfg_dict(entry, tag)               # timm's dict (resolve_data_config reads it)
    model.default_cfg = model.pretrained_cfg
    model.zoo_name = entry.name
    source = pretrained_file
    sha256 = filename = None
    if pretrained and source is None:
        if cfg is None or not cfg.has_weights:
            raise UnknownModelError(f"{entry.name} has no pretrained weights; "
                                    f"`zoo list --pretrained` shows the models that do")
        source, sha256 = cfg.source_string(), cfg.sha256
        filename = None if source.startswith("hf-hub:") else cfg.filename   # an hf-hub source names its file
    if source is not None:
        from . import hub
        sd = hub.load_state_dict(source, sha256=sha256, filename=filename)
        _check_entries(_state_dict_of(sd), str(source), type(model).__name__)
        if entry.filter_fn is not None:
            sd = entry.filter_fn(sd, model)
        load_checkpoint(model, sd, source=str(source))
    return _feature_net(model, entry.name, **feature_kw) if features_only else model


def load_checkpoint(model: nn.Module, state_dict: dict, source: str = "checkpoint", strict: bool = True) -> None:
    """Load ``state_dict`` into ``model``, naming every missing, unexpected or mis-shaped key in the error."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{source}: expected a state dict (str -> tensor), got {type(state_dict).__name__}")
    _check_entries(state_dict, source, type(model).__name__)
    own = model.state_dict()
    added = _added_by_attention_options(model)
    missing = [k for k in own if k not in state_dict and not any(k.startswith(p) for p in added)]
    unexpected = [k for k in state_dict if k not in own]
    shape = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:12])}" + (" ..." if len(missing) > 12 else ""))
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:12])}"
                        + (" ..." if len(unexpected) > 12 else ""))
    if shape:
        problems.append(f"shape mismatch ({len(shape)}): {'; '.join(shape[:8])}")
    if problems:
        raise CheckpointError(f"cannot load {source} into {type(model).__name__}: " + " | ".join(problems)
                              + _encoding_hint(model, missing if strict else []))
    keep = {k: v for k, v in own.items() if k not in state_dict and any(k.startswith(p) for p in added)}
    model.load_state_dict({**state_dict, **keep} if keep else state_dict, strict=strict)


def _added_by_attention_options(model: nn.Module) -> List[str]:
    """Prefixes of the parameters an attention option adds to a trained model (a learned temperature, e.g. the
    per-head scale trained on top of a frozen model): a checkpoint without them loads, they keep their init."""
    from .nn.temperature import Temperature
    return [name + "." for name, m in model.named_modules() if isinstance(m, Temperature) and name]


def _encoding_hint(model: nn.Module, missing: List[str]) -> str:
    """When every missing key belongs to a positional encoding (one swapped in with ``pe=`` that has parameters),
    say so: only parameter-free encodings (RoPE scaling variants, ALiBi interpolation) extend a trained model."""
    from .pe.base import PositionalEncoding
    prefixes = {name + "." for name, m in model.named_modules(remove_duplicate=False)
                if isinstance(m, PositionalEncoding) and name}
    if not missing or not all(any(k.startswith(p) for p in prefixes) for k in missing):
        return ""
    kinds = sorted({type(m).__name__ for name, m in model.named_modules(remove_duplicate=False)
                    if name + "." in prefixes and any(k.startswith(name + ".") for k in missing)})
    return (f" | the missing keys are parameters of the model's positional encoding ({', '.join(kinds)}) that the "
            f"checkpoint was trained without: an encoding swapped in with pe= at inference must have no parameters "
            f"(RoPE scaling variants, ALiBi interpolation); train this one (fine-tune with model.pe) or call "
            f"zoo.load_checkpoint(model, state_dict, strict=False) to keep its fresh initialisation")


def list_models(pattern: str = "*", pretrained: bool = False, domain: Optional[str] = None,
                unpublished: bool = False) -> List[str]:
    """Registered model names matching a shell-style ``pattern``; with ``pretrained=True``, ``name.tag`` entries
    that have released weights (``unpublished=True``: also the tags registered ahead of their upload, whose
    weights cannot be fetched yet; ``zoo list --pretrained`` marks them)."""
    _load_plugins()
    out = []
    for name in sorted(_REGISTRY):
        e = _REGISTRY[name]
        if domain is not None and e.domain != domain:
            continue
        if pretrained:
            out += [f"{name}.{t}" for t, c in e.cfgs.items()
                    if (c.has_weights or (unpublished and c.has_source and not c.published))
                    and (fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(f"{name}.{t}", pattern))]
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
