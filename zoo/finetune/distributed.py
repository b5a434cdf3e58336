"""Data-parallel fine-tuning under ``torchrun``: process group, model wrapping, batch shards, gathered state.

    torchrun --standalone --nproc_per_node=2 -m zoo finetune configs/vision/vit_irpe_tiny_fmnist.yaml
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m zoo finetune ...

The engine reads the rank, world size and local rank that torchrun puts in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``); with one process (no torchrun, or ``--nproc_per_node=1``) nothing here is used.
nccl on CUDA (each rank takes ``cuda:LOCAL_RANK``), gloo on CPU. ``train.parallel``: ``ddp`` (DistributedDataParallel,
the default) or ``fsdp`` (FSDP2 ``fully_shard`` on each block of the model's ``blocks`` / ``layers`` list, then on the
root: parameters, gradients and optimizer state sharded across ranks).

``train.batch_size`` stays the global batch: every rank draws the same seeded micro-batch and keeps its own
contiguous rows (`Task.shard`), so a recipe is the same run on any number of ranks.
"""
from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass, is_dataclass, replace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ZooError
from .config import PARALLEL_MODES

__all__ = ["DistInfo", "DistributedRunError", "env_info", "setup", "teardown", "collective", "wrap_model", "unwrap",
           "batch_rows", "shard_rows", "rank_slice", "model_state", "optimizer_state", "load_optimizer_state",
           "all_reduce_sum", "all_gather_objects", "grad_sync", "PARALLEL_MODES", "SHARDED_LISTS",
           "training_state_bytes", "TRAINING_BYTES_PER_PARAM"]

# ModuleLists whose entries FSDP2 shards one by one (then the root takes the rest)
SHARDED_LISTS = ("blocks", "layers", "layer", "block")


class DistributedRunError(ZooError, RuntimeError):
    """A collective operation failed: another rank stopped (crashed, was killed) or the network between them did."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the run: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def env_info() -> DistInfo:
    """The rank, world size and local rank torchrun set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process
    otherwise."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} WORLD_SIZE={world}: the rank must lie in [0, WORLD_SIZE) (set by torchrun)")
    return DistInfo(rank, world, local)


def setup(info: DistInfo, device_name: str, timeout_s: float) -> Tuple[torch.device, bool]:
    """Join the process group (unless the caller already did) and pick this rank's device: ``cuda:LOCAL_RANK``
    with nccl when ``train.device`` is cuda or auto with CUDA present, the CPU with gloo otherwise. Returns the
    device and whether this call created the group (`teardown` then destroys it)."""
    import torch.distributed as dist

    use_cuda = device_name != "cpu" and torch.cuda.is_available() and not device_name.startswith("cpu")
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    if use_cuda:
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={info.local_rank} but this node has {torch.cuda.device_count()} CUDA "
                              f"device(s): start at most that many processes per node (torchrun --nproc_per_node)")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=info.rank, world_size=info.world_size,
                                timeout=datetime.timedelta(seconds=float(timeout_s)))
        created = True
    elif dist.get_world_size() != info.world_size or dist.get_rank() != info.rank:
        raise ConfigError(f"a process group of {dist.get_world_size()} ranks is already initialised, but the "
                          f"environment says rank {info.rank} of {info.world_size}")
    return device, created


def teardown(created: bool) -> None:
    import torch.distributed as dist

    if created and dist.is_initialized():
        dist.destroy_process_group()


_TRANSPORT_WORDS = ("gloo", "nccl", "c10d", "connection reset", "connection closed", "connection refused",
                    "broken pipe", "timed out", "timeout", "socket", "peer", "store")


def is_collective_failure(e: BaseException) -> bool:
    """Whether ``e`` is a failed collective: torch's DistError family, or a RuntimeError whose message names the
    transport (gloo raises plain RuntimeErrors when a peer disappears)."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(w in text for w in _TRANSPORT_WORDS)


@contextmanager
def collective(info: DistInfo, what: str) -> Iterator[None]:
    """Turn a failed collective inside the block into a DistributedRunError naming this rank and ``what``."""
    try:
        yield
    except Exception as e:
        if not info.enabled or isinstance(e, ZooError) or not is_collective_failure(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedRunError(f"rank {info.rank} of {info.world_size}: {what} failed, another rank has stopped "
                                  f"(or the connection between ranks broke): {first}") from None


def all_reduce_sum(t: Tensor) -> Tensor:
    import torch.distributed as dist
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any, info: DistInfo) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    import torch.distributed as dist
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# ---- the model -------------------------------------------------------------------------------------------------

def _ddp_class():
    from torch.nn.parallel import DistributedDataParallel

    class _DDP(DistributedDataParallel):
        """DistributedDataParallel whose unknown attributes are the wrapped model's (a task reads ``model.causal``
        or calls ``model.link_head`` as on the bare model)."""

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)

    return _DDP


def wrap_model(model: nn.Module, info: DistInfo, mode: str, device: torch.device,
               find_unused_parameters: bool = False) -> nn.Module:
    """``model`` ready for data-parallel training: DDP (``mode="ddp"``) or FSDP2 (``"fsdp"``). Build the optimizer
    after this call: FSDP2 replaces the parameters by sharded ones."""
    if mode not in PARALLEL_MODES:
        raise ConfigError(f"invalid value for config key 'train.parallel': {mode!r} ({', '.join(PARALLEL_MODES)})")
    if mode == "ddp":
        has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        return _ddp_class()(model, device_ids=[device.index] if device.type == "cuda" else None,
                            find_unused_parameters=find_unused_parameters,
                            # buffers are deterministic (rotary caches, position tables); running statistics
                            # of batch norms are rank 0's, as DDP does by default
                            **_buffer_sync(has_batchnorm))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (info.world_size,))
    for name, child in model.named_modules():
        if name.split(".")[-1] in SHARDED_LISTS and isinstance(child, nn.ModuleList):
            for block in child:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _buffer_sync(sync: bool) -> Dict[str, bool]:
    """DDP's keyword for syncing buffers before each forward (``forward_sync_buffers`` where torch has it, else
    ``broadcast_buffers``); both sync them once at construction."""
    import inspect
    from torch.nn.parallel import DistributedDataParallel
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": sync}


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (an FSDP2 model is its own module)."""
    from torch.nn.parallel import DistributedDataParallel
    return model.module if isinstance(model, DistributedDataParallel) else model


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:                                   # pragma: no cover - torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


@contextmanager
def grad_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Backward passes inside the block all-reduce (DDP) / reduce-scatter (FSDP2) gradients only when ``sync``:
    the inner micro-batches of an accumulated step skip the communication."""
    from torch.nn.parallel import DistributedDataParallel
    if sync:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif _is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def model_state(model: nn.Module) -> Dict[str, Tensor]:
    """The full state dict on the CPU (FSDP2: gathered from the shards: every rank must call it; ranks other than 0
    get an empty dict)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return dict(sd)
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def _param_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> List[str]:
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The optimizer state as one process holds it (``state`` keyed by parameter index): a checkpoint resumes
    under any number of ranks and either mode. FSDP2: gathered from the shards (every rank must call it; ranks
    other than 0 get an empty dict)."""
    if not _is_fsdp(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))
    if not full:                                          # cpu_offload: the full state lives on rank 0 only
        return {}
    index = {name: i for i, name in enumerate(_param_order(model, optimizer))}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[n] for n in g["params"]]}
              for g in full["param_groups"]]
    return {"state": {index[n]: s for n, s in full["state"].items()}, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    """Load a one-process optimizer state (`optimizer_state`) into ``optimizer`` (FSDP2: each rank keeps its
    shards)."""
    if not _is_fsdp(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    order = _param_order(model, optimizer)
    full = {"state": {order[int(i)]: s for i, s in state["state"].items()},
            "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                              "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, optim_state_dict=full,
                             options=StateDictOptions(full_state_dict=True))


# ---- the batch -------------------------------------------------------------------------------------------------

def rank_slice(rows: int, rank: int, world: int) -> Tuple[int, int]:
    """``(lo, hi)``: the contiguous rows of ``rank``: the first ``rows % world`` ranks take one more row."""
    base, extra = divmod(rows, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _first_rows(x: Any) -> Optional[int]:
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.ndim else None
    from ..positions import Positions
    if isinstance(x, Positions):
        for name, axis in Positions._TOKEN_AXES:
            v = getattr(x, name)
            if isinstance(v, Tensor) and v.ndim == 1 - axis:
                return int(v.shape[0])
        return None
    if isinstance(x, dict):
        values = list(x.values())
    elif isinstance(x, (list, tuple)) and not (is_dataclass(x)):
        values = list(x)
    else:
        return None
    for v in values:
        if isinstance(v, (Tensor, dict, tuple)):
            n = _first_rows(v)
            if n is not None:
                return n
    return None


def batch_rows(batch: Any) -> int:
    """The rows (samples) of a micro-batch: dim 0 of its first batched tensor (in a tuple, a dict or `Positions`),
    or the length of a list of samples."""
    if isinstance(batch, list):
        return len(batch)
    n = _first_rows(batch)
    if n is None:
        raise ConfigError(f"cannot tell the rows of a training batch of type {type(batch).__name__}: the task must "
                          f"define Task.batch_samples and Task.shard")
    return n


def shard_rows(x: Any, lo: int, hi: int, rows: int) -> Any:
    """``x`` with every per-row part cut to rows ``lo:hi``: tensors whose dim 0 is ``rows``, the batched fields of
    `Positions` (a shared ``grid [n, 2]`` stays whole), lists of ``rows`` samples; nested in tuples and dicts.
    Everything else is kept as it is."""
    from ..positions import Positions
    if isinstance(x, Tensor):
        return x[lo:hi] if x.ndim and x.shape[0] == rows else x
    if isinstance(x, Positions):
        out = {}
        for name, axis in Positions._TOKEN_AXES:
            v = getattr(x, name)
            if isinstance(v, Tensor) and v.ndim == 1 - axis and v.shape[0] == rows:
                out[name] = v[lo:hi]
        return replace(x, **out)
    if isinstance(x, dict):
        return type(x)((k, shard_rows(v, lo, hi, rows)) for k, v in x.items())
    if isinstance(x, list):
        return x[lo:hi] if len(x) == rows else [shard_rows(v, lo, hi, rows) for v in x]
    if isinstance(x, tuple) and not is_dataclass(x):
        parts = [shard_rows(v, lo, hi, rows) for v in x]
        return type(x)(*parts) if hasattr(x, "_fields") else tuple(parts)
    return x


# ---- memory --------------------------------------------------------------------------------------------------

# bytes a parameter costs in training: float32 weight + gradient + AdamW's two moments (bf16 / fp16 autocast keeps
# the float32 weights and computes a low-precision copy on the fly; only the activations shrink)
TRAINING_BYTES_PER_PARAM = 4 + 4 + 8


def training_state_bytes(num_params: int, world_size: int = 1, parallel: str = "ddp") -> int:
    """Bytes of weights, gradients and AdamW state each rank holds while training a model of ``num_params``:
    all of them under DDP (every rank a full replica), a ``1 / world_size`` share under FSDP2 (plus, in flight,
    the gathered weights and gradients of the block being computed, not counted here). Activations come on top
    and grow with the per-rank batch."""
    if parallel not in PARALLEL_MODES:
        raise ConfigError(f"parallel must be one of {', '.join(PARALLEL_MODES)}, got {parallel!r}")
    total = TRAINING_BYTES_PER_PARAM * int(num_params)
    return total if parallel == "ddp" else -(-total // int(world_size))
