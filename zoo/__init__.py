"""zoo: a PyTorch model zoo where positional encoding is the unit of reuse.

    >>> import zoo
    >>> model = zoo.create("vit_irpe_small")
"""
from .positions import Positions
from .registry import PretrainedCfg, create, list_models, load_checkpoint, model_info, register_model

__version__ = "0.1.0"
__all__ = ["Positions", "PretrainedCfg", "create", "list_models", "model_info", "register_model", "load_checkpoint"]


def _register_timm_plugins() -> None:
    # the models of plugins declared with `timm` are registered eagerly, so that `timm.create_model(name)` knows
    # them after `import zoo`; the other plugins' models wait for the first registry query
    try:
        import timm  # noqa: F401
    except ImportError:
        return
    from .plugins import import_models
    import_models(only_timm=True)


_register_timm_plugins()
