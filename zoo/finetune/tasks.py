"""Fine-tuning tasks: what the engine needs to know about a domain's data, loss and metrics.

A task is registered under a name (``cfg.task``) by a module its plugin declares (`zoo.plugins`); that module is
imported the first time the task is asked for, so ``import zoo`` never imports a plugin's tasks. The task owns the
schema of ``cfg.data``: ``data_schema``, a dataclass extending `zoo.finetune.config.DataCfg` with the task's keys,
their defaults and a ``check`` of their values, declared beside the task::

    @dataclass
    class TextData(DataCfg):
        seq_len: int = 128                     # tokens per window

        @classmethod
        def check(cls, d):
            super().check(d)
            check_at_least(d, 1, "seq_len")

    @register_task("text_lm")
    class TextLM(Task):
        data_schema = TextData

The engine drives a task like this::

    task = get_task(cfg.task)()
    task.resume_dir = run_dir if resuming else None
    train, evaluation = task.build_data(cfg)        # also remembers cfg
    model = zoo.create(cfg.model.name, **task.model_kwargs(cfg))
    task.to(device)
    task.save_artifacts(run_dir)                    # once per run: what the weights need (a tokenizer)
    for batch in task.train_batches(epoch, generator, start=k):   # deterministic given (seed, epoch)
        part, has_rows = task.shard(batch, rank, world_size)       # under torchrun: this rank's rows
        loss, n = task.loss(model, part)            # mean over n terms (samples, predicted tokens, pairs)
    metrics = task.evaluate(model)                  # over the whole eval split, no grad, eval mode

``train_batches`` must draw all of its randomness (order, augmentation) from ``generator`` and must be able to
start at micro-batch ``start`` producing exactly the batches an uninterrupted pass would produce there: that is
what makes ``--resume`` exact. A task whose data depends on something it derives (a tokenizer trained on the
training split) saves it in ``save_artifacts`` and, when ``resume_dir`` is set, reuses the saved copy instead of
deriving it again.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .config import DataCfg

__all__ = ["Task", "register_task", "get_task", "list_tasks", "task_module", "token_mean"]

_TASKS: Dict[str, Type["Task"]] = {}


class Task(ABC):
    """Base class. Subclasses implement the abstract methods; ``model_kwargs``, ``to`` and ``describe`` have defaults."""

    name: str = "task"
    main_metric: str = "loss"        # the metric that defines "best"
    main_mode: str = "min"           # "min" or "max"
    data_schema: ClassVar[type] = DataCfg    # the dataclass of cfg.data: its keys, defaults and value checks
    # set by the engine before build_data on --resume: the run folder whose artifacts (save_artifacts) to reuse
    resume_dir: Optional[Path] = None

    @abstractmethod
    def build_data(self, cfg) -> Tuple[Any, Any]:
        """Load the train and eval data named by ``cfg.data``; returns ``(train, eval)``."""

    def model_kwargs(self, cfg) -> Dict[str, Any]:
        """Builder kwargs: defaults from the data (classes, channels, size), overridden by ``cfg.model.kwargs``."""
        return dict(cfg.model.kwargs)

    def to(self, device: torch.device) -> "Task":
        """Move in-memory data to ``device`` (no-op by default)."""
        return self

    @abstractmethod
    def num_train_batches(self) -> int:
        """Micro-batches in one pass over the training data."""

    @abstractmethod
    def num_train_samples(self) -> int:
        """Samples in one pass over the training data."""

    @abstractmethod
    def train_batches(self, epoch: int, generator: torch.Generator, start: int = 0) -> Iterator[Any]:
        """Micro-batches of epoch ``epoch`` from index ``start`` on; all randomness from ``generator``."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> Tuple[Tensor, Union[int, Tensor]]:
        """``(mean, n)``: the mean loss over the batch (a scalar tensor with grad) and the number of terms it
        averages (samples, predicted tokens, labelled words, pairs: an int or a 0-dim tensor). The engine weighs
        micro-batches and ranks by ``n``, so that every term of a global batch counts alike."""

    def batch_samples(self, batch: Any) -> int:
        """The samples (rows) in a micro-batch, for throughput. Default: `distributed.batch_rows`."""
        from .distributed import batch_rows
        return batch_rows(batch)

    def shard(self, batch: Any, rank: int, world_size: int) -> Tuple[Any, bool]:
        """``(part, has_rows)``: rank ``rank``'s contiguous share of the rows of a global micro-batch (the first
        ``rows % world_size`` ranks take one row more). A rank left without rows gets the first row and
        ``has_rows=False``: it computes a loss of weight 0, so that every rank takes part in each gradient
        all-reduce. Default: `distributed.shard_rows` (per-row tensors, the batched fields of `Positions`, lists of
        samples, nested in tuples and dicts); override it for a batch whose rows are not on dim 0."""
        from .distributed import rank_slice, shard_rows
        rows = self.batch_samples(batch)
        lo, hi = rank_slice(rows, rank, world_size)
        if hi <= lo:
            return shard_rows(batch, 0, 1, rows), False
        return shard_rows(batch, lo, hi, rows), True

    @abstractmethod
    def evaluate(self, model: nn.Module, batch_size: int = 512) -> Dict[str, float]:
        """Metrics over the whole eval split: batched, no grad, ``model.eval()``."""

    def eval_sums(self, model: nn.Module, batch_size: int, rank: int,
                  world_size: int) -> Optional[Dict[str, Tensor]]:
        """Additive sums (0-dim tensors) over rank ``rank``'s contiguous share of the eval split, from which
        `eval_metrics` computes the metrics: under torchrun each rank evaluates its share and the sums are
        all-reduced. None (the default): the task evaluates only as a whole, and every rank evaluates all of it."""
        return None

    def eval_metrics(self, sums: Dict[str, Tensor]) -> Dict[str, float]:
        """The metrics from the (all-reduced) `eval_sums`. A task overrides both or neither (`register_task`
        checks); the base form, reached only by a task without shares, reads the sums as the metrics."""
        return {k: float(v) for k, v in sums.items()}

    def save_artifacts(self, run_dir: Path) -> List[str]:
        """Write what the trained weights need besides themselves (a tokenizer, a label map) into ``run_dir``, each
        file atomically; returns the file names. Called once per run, after ``build_data``. Default: nothing."""
        return []

    def describe(self) -> Dict[str, Any]:
        """A few facts about the data, for the run summary."""
        return {}


def token_mean(losses: Tensor, keep: Tensor) -> Tuple[Tensor, Tensor]:
    """``(mean, n)`` of the per-term ``losses`` where ``keep`` is True (``n`` a 0-dim tensor: no host sync); the
    mean is 0 (with grad) where no term is kept."""
    keep = keep.reshape(losses.shape)
    n = keep.sum()
    total = torch.where(keep, losses, torch.zeros_like(losses)).sum()
    return total / n.clamp(min=1).to(total.dtype), n


def register_task(name: str):
    """Class decorator: ``@register_task("image_classification")``."""

    def deco(cls: Type[Task]) -> Type[Task]:
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__module__}")
        if (cls.eval_sums is Task.eval_sums) != (cls.eval_metrics is Task.eval_metrics):
            raise TypeError(f"task {name!r} ({cls.__qualname__}) overrides one of eval_sums / eval_metrics: a task "
                            f"that evaluates in shares defines both (the sums, and the metrics from them)")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return deco


def list_tasks() -> List[str]:
    """Every task registered or declared by a plugin."""
    from ..plugins import task_names
    return sorted(set(_TASKS) | set(task_names()))


def task_module(name: str) -> Optional[str]:
    """The module that registers task ``name``: the class's own module once registered, else what its plugin
    declares (None for an unknown task)."""
    from ..plugins import task_module as declared
    return _TASKS[name].__module__ if name in _TASKS else declared(name)


def get_task(name: str) -> Type[Task]:
    """The task class registered as ``name`` (importing the module its plugin declares on first use)."""
    if not isinstance(name, str):
        raise ConfigError(f"task must be a task name (a str), got {type(name).__name__} {name!r}")
    module = task_module(name)
    if name not in _TASKS and module is not None:
        importlib.import_module(module)
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r} (config key 'task'); available tasks: {', '.join(list_tasks())}")
    return _TASKS[name]
