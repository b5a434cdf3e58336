"""The encoding registry: every encoding registers itself in its own file with `register_pe`.

    @register_pe("alibi", positions="1d", paper="Press et al., Train Short, Test Long, ICLR 2022, arXiv:2108.12409",
                 causal_ok=True, relative=True, geometry={"causal": "causal"})
    class ALiBi(PositionalEncoding): ...

Names map to a class or to a small factory (a named variant, e.g. ``rope_yarn``; then ``builds=`` names the class it
returns).  `create(spec, **kw)` builds by name or from a mapping ``{"name": ..., **kwargs}``; `build(spec, ...)`
builds for a model from its geometry; `list_pe` and `info` describe what is registered.

Geometry: the fixed vocabulary a model can always supply to `build` (``None``: the model does not know it).

    dim         model width (token features an ``embed`` hook adds to)
    head_dim    width of one attention head (q / k channels a ``rotate`` or ``bias`` hook reads)
    num_heads   attention heads
    causal      True in a decoder (causal attention), False in an encoder
    max_len     longest sequence the model is built for (tables, original length of context extension)
    depth       number of blocks (encodings with per-layer state)
    grid_size   ``(h, w)`` token grid of a 2D model

Each registration maps geometry onto its constructor: a parameter named like a geometry entry receives it; the
``geometry=`` mapping of a registration names the others (``{"hidden_size": "dim"}``) or derives a value from one
entry with a ``(name, function)`` pair (``{"bidirectional": ("causal", operator.not_)}``).  An entry the model
leaves None passes nothing.  Geometry the encoding does not take is ignored; the spec's own keywords
stay strict (an unknown one is an error naming it and the accepted ones) and win over geometry.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from ..errors import ConfigError
from .base import PositionalEncoding, _defined_in

__all__ = ["register_pe", "create", "build", "list_pe", "info", "PEInfo", "PEConfigError", "POSITION_KINDS",
           "GEOMETRY", "HOOKS"]

POSITION_KINDS = ("1d", "2d", "boxes", "graph", "multimodal")
GEOMETRY = ("dim", "head_dim", "num_heads", "causal", "max_len", "depth", "grid_size")
HOOKS = ("embed", "rotate", "bias", "value")

Spec = Union[str, Mapping[str, Any]]


class PEConfigError(ConfigError):
    """An unknown encoding name, an unknown or missing keyword, or a malformed spec."""


@dataclasses.dataclass(frozen=True)
class PEInfo:
    """What `info` reports about a registered name."""
    name: str
    positions: str                  # one of POSITION_KINDS: the `Positions` fields the encoding reads
    hooks: Tuple[str, ...]          # hooks it overrides (those a keyword may switch on included, e.g. Shaw's values)
    paper: str                      # title + arXiv / venue
    position_only: bool             # `bias_from_positions_only`: one bias per forward under ``pe.shared(pos)``
    causal_ok: bool                 # a decoder with a KV cache gives the outputs of a full forward
    relative: bool                  # scores depend on position differences only (shift invariant)
    cls: type                       # the class it builds
    summary: str                    # first line of the class docstring
    geometry: Tuple[str, ...]       # the geometry entries `build` passes to it
    accepts: Tuple[str, ...]        # keywords a spec may give
    example: Dict[str, Any]         # keywords (beyond geometry) of a typical use; {} when geometry is enough

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    fn: Callable[..., PositionalEncoding]
    cls: type
    positions: str
    paper: str
    causal_ok: bool
    relative: bool
    geometry: Mapping[str, Union[str, Tuple[str, Callable[[Any], Any]]]]
    example: Union[Mapping[str, Any], Callable[[Dict[str, Any]], Mapping[str, Any]]]


_REGISTRY: Dict[str, _Entry] = {}


# ---- registration -------------------------------------------------------------------------------------------------

def _params(fn: Callable) -> List[inspect.Parameter]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return []
    if inspect.isclass(fn) and params:
        params = params[1:]                                                  # self
    return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD)]


def register_pe(name: str, fn: Optional[Callable[..., PositionalEncoding]] = None, *, positions: str = "1d",
                paper: str = "", causal_ok: bool = False, relative: bool = False,
                geometry: Optional[Mapping[str, Any]] = None, builds: Optional[type] = None,
                example: Union[Mapping[str, Any], Callable[[Dict[str, Any]], Mapping[str, Any]], None] = None,
                overwrite: bool = False):
    """Register ``fn`` (a `PositionalEncoding` class or a factory returning one) as ``name``.

    ``register_pe(name, cls)`` registers at once and returns ``cls``; ``@register_pe(name, positions=..., ...)``
    decorates a class or a factory.  ``builds``: the class a factory returns (default: ``fn`` itself).  ``geometry``:
    constructor parameter -> geometry name or ``(geometry name, function of its value)`` (see the module docstring).
    ``example``: keywords a typical use adds to the geometry (a mapping or a function of the geometry dict)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if positions not in POSITION_KINDS:
        raise ValueError(f"positions must be one of {POSITION_KINDS}, got {positions!r}")
    for param, source in (geometry or {}).items():
        if isinstance(source, tuple) and len(source) == 2 and callable(source[1]):
            source = source[0]
        if source not in GEOMETRY:
            raise ValueError(f"geometry for {name!r} maps {param!r} to {source!r}, which is not one of {GEOMETRY}")

    def add(fn):
        if not callable(fn):
            raise ValueError(f"cls for {name!r} must be callable, got {fn!r}")
        cls = builds if builds is not None else fn
        if not (inspect.isclass(cls) and issubclass(cls, PositionalEncoding)):
            raise ValueError(f"{name!r} must build a PositionalEncoding subclass (give builds= for a factory), "
                             f"got {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and old.fn is not fn and not overwrite:
            raise ValueError(f"positional encoding {name!r} is already registered to {old.fn!r}; pass overwrite=True "
                             f"to replace it")
        _REGISTRY[name] = _Entry(name, fn, cls, positions, paper, bool(causal_ok), bool(relative),
                                 dict(geometry or {}), example if example is not None else {})
        return fn

    return add(fn) if fn is not None else add


def unregister_pe(name: str) -> None:
    """Remove ``name`` (tests that register temporary encodings)."""
    _REGISTRY.pop(name, None)


# ---- lookup ---------------------------------------------------------------------------------------------------------

def _entry(name: Any) -> _Entry:
    if not isinstance(name, str):
        raise PEConfigError(f"positional encoding name must be a str such as 'rope', got {type(name).__name__} "
                            f"{name!r}")
    entry = _REGISTRY.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        if not close:
            close = [n for n in sorted(_REGISTRY) if name.split("_")[0] and name.split("_")[0] in n][:5]
        hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
        raise PEConfigError(f"unknown positional encoding {name!r}{hint}. Known: {', '.join(list_pe())}")
    return entry


def _split(spec: Spec) -> Tuple[str, Dict[str, Any]]:
    """``"rope"`` -> ``("rope", {})``; ``{"name": "rope", "base": 5e5}`` (or an omegaconf node) -> name, kwargs."""
    if isinstance(spec, str):
        return spec, {}
    if type(spec).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf                                     # only when given an omegaconf node
        spec = OmegaConf.to_container(spec, resolve=True)
    if not isinstance(spec, Mapping):
        raise PEConfigError(f"positional encoding spec must be a name or a mapping {{'name': ..., **kwargs}}, got "
                            f"{type(spec).__name__} {spec!r}")
    kwargs = dict(spec)
    if "name" not in kwargs:
        raise PEConfigError(f"positional encoding spec {dict(spec)!r} has no 'name' (one of: {', '.join(list_pe())})")
    return kwargs.pop("name"), kwargs


def _accepts(entry: _Entry) -> Tuple[List[str], List[str], bool]:
    """(accepted keyword names, required ones, takes **kwargs)."""
    params = _params(entry.fn)
    var = any(p.kind == p.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind != p.VAR_KEYWORD]
    return [p.name for p in named], [p.name for p in named if p.default is p.empty], var


def create(spec: Spec, **kwargs) -> PositionalEncoding:
    """Build an encoding: ``create("rope", head_dim=64)``, ``create({"name": "rope_yarn", "factor": 4.0},
    head_dim=64)`` (keywords override the mapping's).  Unknown names and keywords raise `PEConfigError` naming the
    closest registered ones."""
    name, spec_kwargs = _split(spec)
    entry = _entry(name)
    kw = {**spec_kwargs, **kwargs}
    accepted, required, var = _accepts(entry)
    if not var:
        unknown = [k for k in kw if k not in accepted]
        if unknown:
            close = difflib.get_close_matches(unknown[0], accepted, n=3)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise PEConfigError(f"positional encoding {name!r} got an unknown keyword {unknown[0]!r}{hint}; "
                                f"{entry.cls.__name__} accepts: {', '.join(accepted) or 'nothing'}")
    missing = [k for k in required if k not in kw]
    if missing:
        raise PEConfigError(f"positional encoding {name!r} needs {', '.join(missing)} (it accepts: "
                            f"{', '.join(accepted)})")
    return entry.fn(**kw)


def _geometry_sources(entry: _Entry) -> Dict[str, Tuple[str, Optional[Callable[[Any], Any]]]]:
    """constructor parameter -> (geometry name, conversion or None), for the parameters the encoding takes."""
    accepted, _, _ = _accepts(entry)
    out = {}
    for param in accepted:
        source = entry.geometry.get(param, param if param in GEOMETRY else None)
        if source is not None:
            out[param] = tuple(source) if isinstance(source, tuple) else (source, None)
    return out


def _geometry_kwargs(entry: _Entry, geometry: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for param, (source, convert) in _geometry_sources(entry).items():
        value = geometry.get(source)
        if value is not None:
            out[param] = convert(value) if convert is not None else value
    return out


def build(spec: Spec, *, dim: Optional[int] = None, head_dim: Optional[int] = None,
          num_heads: Optional[int] = None, causal: Optional[bool] = None, max_len: Optional[int] = None,
          depth: Optional[int] = None, grid_size: Optional[Tuple[int, int]] = None) -> PositionalEncoding:
    """Build ``spec`` (a name or ``{"name": ..., **kwargs}``) for a model of this geometry (see the module
    docstring): each encoding takes the entries it needs; the spec's keywords win and stay strict."""
    name, spec_kwargs = _split(spec)
    entry = _entry(name)
    geometry = dict(dim=dim, head_dim=head_dim, num_heads=num_heads, causal=causal, max_len=max_len, depth=depth,
                    grid_size=None if grid_size is None else tuple(grid_size))
    return create(name, **{**_geometry_kwargs(entry, geometry), **spec_kwargs})


def example_kwargs(name: str, **geometry) -> Dict[str, Any]:
    """The registration's example keywords for this geometry (what a typical spec adds to `build`)."""
    entry = _entry(name)
    g = {k: geometry.get(k) for k in GEOMETRY}
    ex = entry.example(g) if callable(entry.example) else entry.example
    return dict(ex)


# ---- introspection --------------------------------------------------------------------------------------------------

def list_pe(pattern: str = "*", positions: Optional[str] = None) -> List[str]:
    """Registered names matching the fnmatch ``pattern``, optionally only those of one ``positions`` kind; sorted."""
    if positions is not None and positions not in POSITION_KINDS:
        raise PEConfigError(f"positions must be one of {POSITION_KINDS}, got {positions!r}")
    return sorted(n for n, e in _REGISTRY.items()
                  if fnmatch.fnmatchcase(n, pattern) and (positions is None or e.positions == positions))


def _dispatch_targets(cls: type) -> List[type]:
    """``cls`` and, when ``cls.__new__`` picks a subclass from its arguments (Shaw, iRPE, T5), those subclasses."""
    out = [cls]
    if "__new__" in cls.__dict__:
        out += [c for c in cls.__subclasses__() if c.__module__ == cls.__module__]
    return out


def hooks_of(cls: type) -> Tuple[str, ...]:
    """The hooks of `HOOKS` that ``cls`` (or a subclass its ``__new__`` may return) overrides."""
    found = set()
    for c in _dispatch_targets(cls):
        for hook in HOOKS:
            impl = _defined_in(c, hook)
            if impl is not None and impl is not PositionalEncoding:
                found.add(hook)
    return tuple(h for h in HOOKS if h in found)


def info(name: str) -> PEInfo:
    """What ``name`` is: positions kind, hooks, paper, flags, class, its summary and the geometry it takes."""
    entry = _entry(name)
    accepted, _, _ = _accepts(entry)
    geometry = sorted({source for source, _ in _geometry_sources(entry).values()}, key=GEOMETRY.index)
    doc = inspect.getdoc(entry.fn) or inspect.getdoc(entry.cls) or ""
    example = entry.example if not callable(entry.example) else {}
    return PEInfo(name=name, positions=entry.positions, hooks=hooks_of(entry.cls), paper=entry.paper,
                  position_only=bool(entry.cls.bias_from_positions_only), causal_ok=entry.causal_ok,
                  relative=entry.relative, cls=entry.cls, summary=doc.split("\n")[0], geometry=tuple(geometry),
                  accepts=tuple(accepted), example=dict(example))
