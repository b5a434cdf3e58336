"""Plugins: the packages that bring models, fine-tuning tasks and benches to the core, discovered, never named.

A plugin declares everything it brings in one mapping, ``PLUGIN``, at the top of its package (no import of zoo
there, so that discovering a plugin never runs its code)::

    PLUGIN = {
        "name": "mydomain",                               # what `zoo list` shows as the model's domain
        "models": [".models"],                            # modules whose import registers models
        "tasks": {"my_task": ".task"},                    # task name -> module whose import registers it
        "benches": [".bench"],                            # modules whose import registers `zoo bench` suites
        "timm": False,                                    # also register the models with timm at `import zoo`
    }

Module names starting with a dot are relative to the plugin's package. Nothing is imported until it is needed:
model modules the first time the registry is asked about models (or at ``import zoo`` for ``timm`` plugins, so that
``timm.create_model`` knows their models), a task module when its task is asked for, bench modules when
``zoo bench`` builds its options.

Discovery. Plugins are found through the ``zoo.plugins`` entry-point group (``[project.entry-points."zoo.plugins"]``
in a distribution's ``pyproject.toml``, the value naming the mapping: ``mydomain = "mypkg:PLUGIN"``): that is how a
third-party package adds a domain without touching this one, and how an installed zoo finds its own domains
wherever it is installed. When no entry point declares a plugin of this project's own ``domains`` package (zoo run
from a source tree that was never installed, or installed before the entry points existed), the subpackages of
``domains`` that define ``PLUGIN`` are scanned instead: metadata first, because it is the only way a third party
can register, and the scan only as a fallback, so a stale checkout next to an installed zoo never adds a second copy.
This module is the one place of ``zoo`` that names the ``domains`` package.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass, field
from importlib import metadata
from typing import Dict, List, Mapping, Optional, Tuple

from .errors import ConfigError

__all__ = ["Plugin", "ENTRY_POINT_GROUP", "SOURCE_PACKAGE", "plugins", "get_plugin", "plugin_of_module",
           "import_models", "task_module", "task_names", "import_benches", "reset"]

ENTRY_POINT_GROUP = "zoo.plugins"
#: the package of this project's own plugins, scanned when no entry point declares one of them
SOURCE_PACKAGE = "domains"
_KEYS = ("name", "models", "tasks", "benches", "timm")


@dataclass(frozen=True)
class Plugin:
    """A plugin's declaration with module names made absolute."""
    name: str
    package: str
    models: Tuple[str, ...] = ()
    tasks: Mapping[str, str] = field(default_factory=dict)
    benches: Tuple[str, ...] = ()
    timm: bool = False

    @classmethod
    def from_mapping(cls, decl: Mapping, package: str) -> "Plugin":
        """Check a ``PLUGIN`` mapping of ``package`` and resolve its relative module names."""
        where = f"plugin {package}.PLUGIN"
        if not isinstance(decl, Mapping):
            raise ConfigError(f"{where} must be a mapping with keys {', '.join(_KEYS)}, got {type(decl).__name__}")
        for key in decl:
            if key not in _KEYS:
                close = difflib.get_close_matches(str(key), _KEYS, n=1)
                raise ConfigError(f"unknown key {key!r} in {where}" + (f"; did you mean {close[0]!r}?" if close
                                                                       else f"; valid keys: {', '.join(_KEYS)}"))
        name = decl.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where} needs a 'name' (a non-empty str), got {name!r}")

        def absolute(mod, key):
            if not isinstance(mod, str) or not mod.strip("."):
                raise ConfigError(f"{where}: every module in {key!r} must be a module name, got {mod!r}")
            return importlib.util.resolve_name(mod, package) if mod.startswith(".") else mod

        def modules(key):
            value = decl.get(key, ())
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}: {key!r} must be a list of module names, got {value!r}")
            return tuple(absolute(m, key) for m in value)

        tasks = decl.get("tasks", {})
        if not isinstance(tasks, Mapping):
            raise ConfigError(f"{where}: 'tasks' must map task names to modules, got {tasks!r}")
        timm = decl.get("timm", False)
        if timm not in (True, False):
            raise ConfigError(f"{where}: 'timm' must be True or False, got {timm!r}")
        return cls(name, package, modules("models"), {str(t): absolute(m, "tasks") for t, m in tasks.items()},
                   modules("benches"), bool(timm))


_PLUGINS: Optional[Dict[str, Plugin]] = None
_MODELS_IMPORTED: set = set()


def _entry_points():
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _add(found: Dict[str, Plugin], plugin: Plugin, origin: str) -> None:
    other = found.get(plugin.name)
    if other is not None and other.package != plugin.package:
        raise ConfigError(f"two plugins are named {plugin.name!r}: {other.package} and {plugin.package} ({origin})")
    found[plugin.name] = plugin


def _discover() -> Dict[str, Plugin]:
    found: Dict[str, Plugin] = {}
    for ep in _entry_points():
        package = ep.value.partition(":")[0].strip()
        try:
            decl = ep.load()
        except Exception as e:
            raise ConfigError(f"cannot load zoo plugin {ep.name!r} ({ep.value}): {type(e).__name__}: {e}") from e
        _add(found, Plugin.from_mapping(decl, package), f"entry point {ep.name}")
    if not any(p.package.split(".")[0] == SOURCE_PACKAGE for p in found.values()):
        for package in _scan_source_tree():
            decl = getattr(importlib.import_module(package), "PLUGIN", None)
            if decl is not None:
                _add(found, Plugin.from_mapping(decl, package), f"scan of {SOURCE_PACKAGE}")
    return found


def _scan_source_tree() -> List[str]:
    """Subpackages of the source tree's plugin package (empty when it is not importable)."""
    try:
        root = importlib.import_module(SOURCE_PACKAGE)
    except ImportError:
        return []
    return sorted(f"{SOURCE_PACKAGE}.{m.name}" for m in pkgutil.iter_modules(root.__path__) if m.ispkg)


def plugins() -> Dict[str, Plugin]:
    """Every discovered plugin, by name (discovered once per process; `reset` forgets them)."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = _discover()
    return _PLUGINS


def reset() -> None:
    """Forget the discovered plugins (the next call discovers them again; registered models and tasks stay)."""
    global _PLUGINS
    _PLUGINS = None
    _MODELS_IMPORTED.clear()


def get_plugin(name: str) -> Plugin:
    found = plugins()
    if name not in found:
        close = difflib.get_close_matches(str(name), list(found), n=3)
        raise ConfigError(f"unknown plugin {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                          + f"; discovered: {', '.join(sorted(found)) or 'none'}")
    return found[name]


def plugin_of_module(module: str) -> Optional[Plugin]:
    """The plugin whose package holds ``module`` (the longest matching package), or None."""
    best = None
    for p in plugins().values():
        if (module == p.package or module.startswith(p.package + ".")) and (
                best is None or len(p.package) > len(best.package)):
            best = p
    return best


def import_models(only_timm: bool = False) -> None:
    """Import the model modules of every plugin (of the ``timm`` ones only with ``only_timm``), once each."""
    for p in list(plugins().values()):
        if (p.timm or not only_timm) and p.name not in _MODELS_IMPORTED:
            for mod in p.models:
                importlib.import_module(mod)
            _MODELS_IMPORTED.add(p.name)


def task_names() -> List[str]:
    """Every task some plugin declares."""
    return sorted({t for p in plugins().values() for t in p.tasks})


def task_module(task: str) -> Optional[str]:
    """The module that registers ``task``, or None when no plugin declares it."""
    for p in plugins().values():
        if task in p.tasks:
            return p.tasks[task]
    return None


def import_benches() -> None:
    """Import the bench modules of every plugin (each registers its `zoo bench` suites)."""
    for p in list(plugins().values()):
        for mod in p.benches:
            importlib.import_module(mod)
