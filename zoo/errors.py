"""Exception hierarchy shared across zoo.

Every error zoo raises on purpose derives from :class:`ZooError`, and also from the
builtin exception a caller would naturally catch (``RuntimeError``, ``KeyError``,
``ValueError``, ``FileNotFoundError``), so existing ``except`` clauses keep working.
"""
from __future__ import annotations

__all__ = [
    "ZooError",
    "WeightsError",
    "ChecksumError",
    "OfflineError",
    "DownloadError",
    "CheckpointError",
    "DatasetNotFoundError",
    "ConfigError",
    "UnknownArgumentError",
    "UnknownModelError",
    "NotScriptableError",
]


class ZooError(Exception):
    """Base class of all zoo errors."""


class WeightsError(ZooError, RuntimeError):
    """Obtaining, caching or reading pretrained weights failed."""


class ChecksumError(WeightsError):
    """A file's SHA-256 does not match the expected digest."""


class OfflineError(WeightsError):
    """Offline mode is on and the requested file is not cached."""


class DownloadError(WeightsError):
    """A transfer failed: HTTP error, network error or truncated body."""


class CheckpointError(WeightsError):
    """A checkpoint is corrupt, truncated, unsafe to unpickle, or has missing/unexpected keys."""


class DatasetNotFoundError(ZooError, FileNotFoundError):
    """A dataset is not present where zoo looked for it."""


class ConfigError(ZooError, ValueError):
    """An invalid configuration value or combination of values."""


class UnknownArgumentError(ConfigError, TypeError):
    """A keyword argument a model builder does not take (a `ConfigError`, and a TypeError as Python and timm raise
    for an unexpected keyword)."""


class UnknownModelError(ZooError, KeyError):
    """A model (or pretrained tag) name is not registered."""

    def __str__(self) -> str:
        # KeyError.__str__ repr-quotes a single argument; show the message as written.
        if len(self.args) == 1:
            return str(self.args[0])
        return super().__str__()


class NotScriptableError(ZooError, NotImplementedError):
    """``torch.jit.script`` of a zoo model: its attention is not TorchScript code (see `refuse_torchscript`)."""
