"""What the timm-contract tests of the vision models share."""
from timm.models import _registry as timm_registry

import zoo


def timm_models():
    """The zoo models registered with timm (the vision classifiers), from both registries (no hand-kept list)."""
    return [n for n in zoo.list_models()
            if getattr(timm_registry._model_entrypoints.get(n), "_zoo_name", None)]
