"""Peak memory of one block of work inside a running process: `PeakMemory`.

On CUDA it is ``torch.cuda.max_memory_allocated`` over the block (reset on entry).  On the CPU the process's resident
set size is sampled by a background thread (every ``interval`` seconds, 2 ms by default) from ``/proc/self/statm``;
``peak_mib`` is the highest sample, ``growth_mib`` that peak minus the RSS on entry, i.e. what the block added on top
of what was already resident (the model, the data).  Sampling can miss a spike shorter than the interval, and RSS
includes memory the C allocator keeps after a free; a measurement that must belong to one model alone runs in a
subprocess of its own (`zoo.bench.speed`).  Where ``/proc`` is missing, the process's ``ru_maxrss`` high-water mark
is used instead (then a block can only show growth beyond every earlier peak).
"""
from __future__ import annotations

import os
import resource
import threading
from typing import Optional

import torch

__all__ = ["PeakMemory", "rss_mib"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mib() -> Optional[float]:
    """Resident set size of this process in MiB, or None where ``/proc/self/statm`` cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_mib``, ``m.base_mib`` and ``m.growth_mib``."""

    def __init__(self, device="cpu", interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = float(interval)
        self.base_mib = self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def growth_mib(self) -> float:
        return max(0.0, self.peak_mib - self.base_mib)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = rss_mib()
            if now is not None and now > self.peak_mib:
                self.peak_mib = now

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mib = self.peak_mib = torch.cuda.memory_allocated(self.device) / 2 ** 20
            return self
        now = rss_mib()
        if now is None:
            self.base_mib = self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return self
        self.base_mib = self.peak_mib = now
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="zoo-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
            return
        if self._thread is None:
            self.peak_mib = max(self.peak_mib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        now = rss_mib()
        if now is not None and now > self.peak_mib:
            self.peak_mib = now
