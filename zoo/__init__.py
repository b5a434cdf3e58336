"""zoo: a PyTorch model zoo where positional encoding is the unit of reuse.

    >>> import zoo
    >>> model = zoo.create("vit_irpe_small")
"""
from .positions import Positions
from .registry import PretrainedCfg, create, list_models, load_checkpoint, model_info, register_model

__version__ = "0.1.0"
__all__ = ["Positions", "PretrainedCfg", "create", "list_models", "model_info", "register_model", "load_checkpoint"]


def _register_vision() -> None:
    # vision models are registered eagerly so that `timm.create_model("vit_irpe_small")` works after `import zoo`
    try:
        import timm  # noqa: F401
    except ImportError:
        return
    from .registry import _load_domains
    _load_domains(("vision",))


_register_vision()
