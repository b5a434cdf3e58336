"""Getting a task's micro-batches to the device: a background thread that prepares them ahead, pinned host memory
and asynchronous copies.

    it = Prefetcher(task.train_batches(epoch, generator, start), depth=2, prepare=pin)
    for batch in it:
        batch = to_device(batch, device, non_blocking=True)
    it.close()                       # also after Ctrl-C or an error: the thread stops, nothing is left running

A batch is any nesting of tensors in tuples, lists, dicts and dataclasses (``zoo.Positions``); `map_tensors`
rebuilds only what holds a tensor that changed, so a batch already on the device comes back as the same object.
"""
from __future__ import annotations

import copy
import dataclasses
import queue
import threading
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

__all__ = ["map_tensors", "to_device", "pin", "Prefetcher", "device_batches"]


def map_tensors(batch: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``batch`` with ``fn`` applied to every tensor inside tuples (named ones too), lists, dicts and dataclass
    instances; containers without a changed tensor are returned as they are (the same object)."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        out = {k: map_tensors(v, fn) for k, v in batch.items()}
        if all(out[k] is v for k, v in batch.items()):
            return batch
        new = copy.copy(batch)                  # keeps the mapping's type (OrderedDict, defaultdict, ...)
        new.update(out)
        return new
    if isinstance(batch, (list, tuple)):
        out = [map_tensors(v, fn) for v in batch]
        if all(a is b for a, b in zip(out, batch)):
            return batch
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):          # a namedtuple
            return type(batch)(*out)
        return type(batch)(out)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changed = {}
        for f in dataclasses.fields(batch):
            v = getattr(batch, f.name)
            w = map_tensors(v, fn)
            if w is not v:
                changed[f.name] = w
        if not changed:
            return batch
        new = copy.copy(batch)                  # no __init__ / __post_init__ again: the values were checked
        for name, v in changed.items():
            object.__setattr__(new, name, v)    # frozen dataclasses too
        return new
    return batch


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Every tensor of ``batch`` on ``device`` (tensors already there are not copied)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())

    def move(t: Tensor) -> Tensor:
        if t.device == device:
            return t
        return t.to(device, non_blocking=non_blocking)
    return map_tensors(batch, move)


def pin(batch: Any) -> Any:
    """Every CPU tensor of ``batch`` in page-locked host memory (what makes a host-to-CUDA copy asynchronous);
    a no-op without CUDA."""
    if not torch.cuda.is_available():
        return batch
    return map_tensors(batch, lambda t: t.pin_memory() if t.device.type == "cpu" and not t.is_pinned() else t)


_DONE = object()


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Iterate ``batches`` in a background thread, up to ``depth`` items ahead (a bounded queue), each passed
    through ``prepare`` there. An exception of the thread is raised by ``next`` with its own type, message and
    traceback; ``close`` (or the end of the iteration) stops the thread and closes ``batches``."""

    def __init__(self, batches: Iterator[Any], depth: int, prepare: Optional[Callable[[Any], Any]] = None,
                 name: str = "zoo-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._source = batches
        self._prepare = prepare
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._source:
                if self._stop.is_set():
                    break
                if self._prepare is not None:
                    item = self._prepare(item)
                if not self._put(item):
                    break
            else:
                self._put(_DONE)
        except BaseException as e:               # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Raised(e))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:                # noqa: BLE001 - a generator that fails to close: nothing to do
                    pass

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _Raised):
            self.close()
            raise item.error
        return item

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (dropping what it prepared) and wait for it (at most ``timeout`` seconds)."""
        self._finished = True
        self._stop.set()
        while True:                              # free a put that waits for room
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __del__(self) -> None:
        if not self._finished:
            self._stop.set()


def device_batches(batches: Iterator[Any], device: torch.device, prefetch: int = 0) -> Iterator[Any]:
    """The training loop's view of a task's ``train_batches``: on ``device``, prepared ``prefetch`` micro-batches
    ahead in a background thread when ``prefetch > 0``. For a CUDA device the CPU tensors of a batch are pinned in
    that thread and copied with ``non_blocking=True`` (a task that keeps its data on the device needs neither).
    Call ``close()`` on the result when done with it (before its end too)."""
    device = torch.device(device)
    if prefetch <= 0:
        return _moved(batches, device, non_blocking=False)
    cuda = device.type == "cuda"
    return _moved(Prefetcher(batches, prefetch, prepare=pin if cuda else None), device, non_blocking=cuda)


class _moved:
    """``to_device`` over an iterator, closing the iterator on ``close``."""

    def __init__(self, batches: Iterator[Any], device: torch.device, non_blocking: bool) -> None:
        self._batches, self._device, self._non_blocking = batches, device, non_blocking

    def __iter__(self) -> "_moved":
        return self

    def __next__(self) -> Any:
        return to_device(next(self._batches), self._device, self._non_blocking)

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()
