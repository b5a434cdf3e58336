"""``train.prefetch``: micro-batches prepared in a background thread; batches moved to the device, pinned on the way
to a CUDA one.

On this CPU-only machine the device copy is the identity (the batches are on the CPU already), so what is tested
here is the thread (order, bound, errors, shutdown), the walk over a batch's structure and that prefetching changes
no number. That a pinned batch is copied asynchronously to a CUDA device (``non_blocking=True``) needs CUDA: only
the choice of what gets pinned is tested here, with a stand-in for ``Tensor.pin_memory``."""
import collections
import dataclasses
import os
import signal
import threading
import time
from typing import NamedTuple

import pytest
import torch

from zoo.errors import ConfigError
from zoo.finetune import build_config, finetune
from zoo.finetune.batches import Prefetcher, device_batches, map_tensors, pin, to_device
from zoo.positions import Positions

from domains.vision.task import ImageClassificationTask
from finetune.test_run_safety import TIMING, digits_cfg, metric_rows
from support.engine import on_loss_call
from support.tiny_runs import tiny_cfg


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "zoo-prefetch" and t.is_alive()]


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# ---- the structure of a batch ---------------------------------------------------------------------------------------

class Pair(NamedTuple):
    x: torch.Tensor
    n: int


@dataclasses.dataclass(frozen=True)
class Frozen:
    t: torch.Tensor
    tag: str = "f"


def nested():
    t = torch.arange(6.0).reshape(2, 3)
    od = collections.OrderedDict(b=t + 1, a=t + 2)
    return {"x": t, "pos": Positions(ids=torch.arange(3).expand(2, 3), grid_size=(1, 3)), "list": [t, 3, "s"],
            "tup": (t, None), "pair": Pair(t, 7), "frozen": Frozen(t), "od": od,
            "dd": collections.defaultdict(list, {"k": t})}


def test_map_tensors_rebuilds_every_container_with_its_type_and_leaves_the_input_alone():
    batch = nested()
    out = map_tensors(batch, lambda t: t.double())
    assert type(out["pos"]) is Positions and out["pos"].ids.dtype == torch.float64
    assert out["pos"].grid_size == (1, 3) and out["pos"].boxes is None
    assert isinstance(out["pair"], Pair) and out["pair"].x.dtype == torch.float64 and out["pair"].n == 7
    assert isinstance(out["frozen"], Frozen) and out["frozen"].t.dtype == torch.float64 and out["frozen"].tag == "f"
    assert type(out["od"]) is collections.OrderedDict and list(out["od"]) == ["b", "a"]
    assert type(out["dd"]) is collections.defaultdict and out["dd"].default_factory is list
    assert out["list"][1:] == [3, "s"] and type(out["tup"]) is tuple and out["tup"][1] is None
    assert all(t.dtype == torch.float64 for t in (out["x"], out["list"][0], out["tup"][0], out["od"]["a"],
                                                   out["dd"]["k"]))
    # the input is untouched
    assert batch["x"].dtype == torch.float32 and batch["pos"].ids.dtype == torch.int64
    assert batch["frozen"].t.dtype == torch.float32 and batch["od"]["a"].dtype == torch.float32


def test_to_device_returns_a_batch_already_there_as_the_same_object():
    batch = nested()
    assert to_device(batch, torch.device("cpu")) is batch
    assert to_device(batch["pos"], "cpu") is batch["pos"] and to_device(batch["pair"], "cpu") is batch["pair"]
    # a tensor elsewhere is moved, the rest is kept as is (the meta device stands in for an accelerator)
    moved = to_device(batch, "meta")
    assert moved is not batch and moved["x"].device.type == "meta" and moved["pos"].ids.device.type == "meta"
    assert moved["list"][1:] == [3, "s"]


def test_pin_pins_the_cpu_tensors_not_yet_pinned_when_cuda_is_there(monkeypatch):
    """Stand-ins for CUDA and Tensor.pin_memory: pinning itself needs a CUDA runtime."""
    batch = nested()
    if not torch.cuda.is_available():
        assert pin(batch) is batch                                   # no CUDA: nothing to pin for
    pinned = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(tuple(self.shape)) or self.clone())
    out = pin(batch)
    # x, list[0], tup[0], pair.x, frozen.t, od.b, od.a, dd.k ([2, 3]) and pos.ids ([2, 3], expanded)
    assert sorted(pinned) == [(2, 3)] * 9 and out is not batch and out["list"][1:] == [3, "s"]


# ---- the thread -----------------------------------------------------------------------------------------------------

def test_prefetcher_yields_everything_in_order_and_ends_its_thread():
    it = Prefetcher(iter(range(100)), depth=3)
    assert list(it) == list(range(100))
    time.sleep(0.05)
    assert prefetch_threads() == []


def test_prefetcher_works_ahead_in_another_thread_but_no_further_than_its_depth():
    produced, where = [], set()

    def source():
        for i in range(50):
            produced.append(i)
            yield i

    it = Prefetcher(source(), depth=2, prepare=lambda x: where.add(threading.current_thread().name) or x)
    assert next(it) == 0
    time.sleep(0.3)                              # the consumer is busy: the thread fills the queue, then waits
    # 1 taken + 2 queued + 1 waiting for room
    assert len(produced) == 4 and where == {"zoo-prefetch"}
    assert [next(it) for _ in range(3)] == [1, 2, 3]
    it.close()
    assert prefetch_threads() == []


def test_an_error_of_the_thread_reaches_the_consumer_with_its_type_message_and_traceback():
    class ShardUnreadable(OSError):
        pass

    def source():
        yield 0
        yield 1
        raise ShardUnreadable(5, "shard 3 cannot be read")

    it = Prefetcher(source(), depth=2)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(ShardUnreadable) as e:
        next(it)
    assert e.value.errno == 5 and str(e.value) == "[Errno 5] shard 3 cannot be read"
    assert any(entry.name == "source" for entry in e.traceback)
    with pytest.raises(StopIteration):
        next(it)
    assert prefetch_threads() == []


def test_close_stops_a_thread_waiting_for_room_and_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            for i in range(10 ** 6):
                yield i
        finally:
            closed.set()

    it = Prefetcher(source(), depth=1)
    assert next(it) == 0
    time.sleep(0.1)                              # the thread now waits to put item 2
    t0 = time.perf_counter()
    it.close()
    assert time.perf_counter() - t0 < 1.0 and closed.wait(1.0) and prefetch_threads() == []
    with pytest.raises(StopIteration):
        next(it)


def test_device_batches_without_prefetch_is_the_plain_iterator_on_the_device():
    it = device_batches(iter([(torch.ones(2), torch.zeros(2))]), torch.device("cpu"), prefetch=0)
    x, y = next(it)
    assert torch.equal(x, torch.ones(2)) and prefetch_threads() == []
    it.close()


# ---- the engine -----------------------------------------------------------------------------------------------------

def augmented_cfg(out, **train):
    """Digits with augmentation, dropout and stochastic depth, 2 micro-batches per step: batches and steps that
    draw random numbers."""
    cfg = digits_cfg(out, **{"amp": "off", "accumulation": 2, **train})
    cfg["data"]["augment"] = True
    cfg["model"] = {"name": "vit_irpe_tiny", "kwargs": {"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2,
                                                        "drop_rate": 0.1, "drop_path_rate": 0.1}}
    return cfg


def test_prefetch_changes_no_number(tmp_path, monkeypatch):
    real, made_in = ImageClassificationTask.train_batches, []

    def recorded(self, epoch, generator, start=0):
        for b in real(self, epoch, generator, start):
            made_in.append(threading.current_thread().name)
            yield b

    monkeypatch.setattr(ImageClassificationTask, "train_batches", recorded)
    a = finetune(augmented_cfg(tmp_path / "p0", steps=6, eval_every=3))
    assert set(made_in) == {"MainThread"}
    made_in.clear()
    b = finetune(augmented_cfg(tmp_path / "p2", steps=6, eval_every=3, prefetch=2))
    assert set(made_in) == {"zoo-prefetch"}                  # the batches were made in the background thread
    assert strip(metric_rows(tmp_path / "p0")) == strip(metric_rows(tmp_path / "p2"))
    assert a["final"] == b["final"] and prefetch_threads() == []
    wa, wb = (torch.load(tmp_path / d / "last.pt", weights_only=True)["model"] for d in ("p0", "p2"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupted_and_resumed_prefetch_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    finetune(augmented_cfg(ref_out, steps=6, eval_every=3))                      # no prefetch
    on_loss_call(monkeypatch, call=7, action=lambda m: os.kill(os.getpid(), signal.SIGINT))   # in step 4
    assert finetune(augmented_cfg(out, steps=6, eval_every=3, prefetch=2))["steps"] == 4
    assert prefetch_threads() == []              # Ctrl-C stopped the thread too
    monkeypatch.undo()
    finetune(augmented_cfg(out, steps=6, eval_every=3, prefetch=3), resume=True)   # train.prefetch may change
    assert strip(metric_rows(out)) == strip(metric_rows(ref_out))


def test_an_error_in_the_tasks_batches_surfaces_from_the_run_unchanged(tmp_path, monkeypatch):
    class AugmentationFailed(RuntimeError):
        pass

    real = ImageClassificationTask.train_batches

    def failing(self, epoch, generator, start=0):
        for i, b in enumerate(real(self, epoch, generator, start)):
            if i == 2:
                raise AugmentationFailed("random_crop_flip: crop 12 exceeds image 8")
            yield b

    monkeypatch.setattr(ImageClassificationTask, "train_batches", failing)
    with pytest.raises(AugmentationFailed, match=r"^random_crop_flip: crop 12 exceeds image 8$"):
        finetune(digits_cfg(tmp_path / "run", steps=4, prefetch=2))
    assert prefetch_threads() == []


def test_code_lm_batches_with_positions_prefetch_to_the_same_losses(tmp_path):
    for p in (0, 2):
        cfg = tiny_cfg("code", tmp_path, tmp_path / f"p{p}", steps=4, prefetch=p)
        cfg["data"]["augment"] = True                 # a random offset per epoch
        finetune(cfg)
    assert strip(metric_rows(tmp_path / "p0")) == strip(metric_rows(tmp_path / "p2"))


def test_prefetch_is_checked():
    with pytest.raises(ConfigError, match=r"'train\.prefetch'.*-1.*>= 0"):
        build_config(digits_cfg("unused", prefetch=-1))
    assert build_config(digits_cfg("unused")).train.prefetch == 0
