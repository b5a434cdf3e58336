"""pytest plugin of ``scripts/timm_contract.py``: the zoo's models in timm's test lists, and only their items.

timm chooses each test's models by name and module filters: ``vit_*`` is "non-standard" (token features, no spatial
``forward_features``), and the modules in ``FEAT_INTER_FILTERS`` are those that implement ``forward_intermediates``.
Every zoo vision classifier is a token-sequence ViT, so each list built while the test module is collected selects
our models exactly as it selects timm's own ViTs: each name is matched as ``vit_<name>`` (unchanged when it already
starts with ``vit_``), from the module ``vision_transformer``. The tests themselves are not touched.
"""
import fnmatch
import os

import timm
import zoo  # noqa: F401  registers the vision models with timm
from timm.models import _registry as timm_registry

PATTERN = os.environ.get("ZOO_TIMM_MODELS", "*")
_timm_list_models = timm.list_models


def _ours(name):
    base = name.split(".")[0]
    return bool(getattr(timm_registry._model_entrypoints.get(base), "_zoo_name", None)) and \
        fnmatch.fnmatch(base, PATTERN)


def _strs(x):
    return [s for s in ([x] if isinstance(x, str) else list(x or ())) if s]


def _as_vit(name):
    return name if name.startswith("vit_") else "vit_" + name


def list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False,
                include_tags=None):
    """``timm.list_models``, with the zoo's models chosen as timm's ViTs are (see the module docstring)."""
    theirs = [n for n in _timm_list_models(filter, module, pretrained, exclude_filters, name_matches_cfg,
                                           include_tags) if not _ours(n)]
    modules = _strs(module)
    if modules and not any(fnmatch.fnmatch("vision_transformer", m) for m in modules):
        return theirs
    tags = pretrained if include_tags is None else include_tags
    expand = timm_registry._expand_filter if tags else (lambda f: [f])
    include = [e for f in _strs(filter) for e in expand(f)]
    exclude = [e for f in _strs(exclude_filters) for e in expand(f)]
    mine = [n for n in _timm_list_models("", "", pretrained, "", name_matches_cfg, include_tags) if _ours(n)]
    mine = [n for n in mine if (not include or any(fnmatch.fnmatch(_as_vit(n), f) for f in include))
            and not any(fnmatch.fnmatch(_as_vit(n), f) for f in exclude)]
    return sorted(theirs + mine, key=timm_registry._natural_key)


timm.list_models = list_models


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        name = spec.params.get("model_name") if spec else None
        (keep if isinstance(name, str) and _ours(name) else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)
