"""The fine-tuning loop: config -> task -> model -> AdamW + warmup/cosine -> metrics, checkpoints, summary.

    zoo finetune configs/vision/vit_irpe_tiny_fmnist.yaml train.epochs=1 [--resume]

Everything a run writes lives in ``output.dir``:

    config.yaml          the resolved config
    metrics.jsonl        one JSON object per line: {"event": "train"|"eval", "step", "epoch", ...}
    last.pt              checkpoint (model, optimizer, scheduler, position in the epoch, RNG states, config; the
                         EMA weights and the fp16 loss scale when those are on)
    model.safetensors    final weights (the EMA's with train.ema_decay), loadable with
                         zoo.create(name, pretrained_file=...)
    summary.json         final and best metrics, steps, wall time, params, throughput
    (task artifacts)     what the weights need besides themselves, e.g. tokenizer.json (Task.save_artifacts)

Under ``torchrun`` (`zoo.finetune.distributed`) every rank runs this loop on its share of each global batch; the
loss is weighted by the global number of terms, every per-step decision (stop, NaN) is taken on all-reduced values,
and rank 0 alone writes.

Exact resume: the data order and augmentation of an epoch are drawn from a generator seeded by (seed, epoch),
the checkpoint stores the micro-batch position inside the epoch and the global RNG states (dropout), so the steps
after ``--resume`` compute the same losses as an uninterrupted run; the checkpoint also carries the running sums of
the current logging window, so the resumed metrics.jsonl equals an uninterrupted run's. Ctrl-C (or SIGTERM, what
schedulers send) stops after the current step (a second one stops at once, losing only that step; signals that come
while a checkpoint is being written wait for the write), saves ``last.pt`` and prints the command that resumes.

A fresh run refuses an ``output.dir`` that holds any output of another run unless ``output.overwrite=true``;
the data under path-valued ``data.*`` keys is fingerprinted (file names and sizes) so that ``--resume`` refuses
other data. The loss is checked for NaN/inf at every step, and the weights before every checkpoint: a diverged run
never writes a checkpoint.

Speed and precision (``train.*``): ``amp`` (bf16 autocast, or fp16 autocast with a dynamic loss scale, `scaling`),
``ema_decay`` (an EMA of the weights evaluated beside them; its metrics define best/final, `ema`), ``compile``
(torch.compile for the training steps) and ``prefetch`` (micro-batches prepared in a background thread, pinned and
copied asynchronously to a CUDA device, `batches`). Exact resume holds with each of them.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import signal
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..errors import CheckpointError, ConfigError, ZooError
from ..io import atomic_write_text, remove_stale_temp_files
from . import distributed as dist
from .batches import device_batches
from .config import build_config, load_config
from .ema import WeightEma
from .runstate import (CHECKPOINT_FORMAT, RESUME_MUTABLE_KEYS, RUN_OUTPUTS, RunOutputError, _check_run_dir,
                       _data_fingerprint, _epoch_generator, _fingerprint_diff, _rank_seed, _rng_state,
                       _seed_everything, _set_rng_state, _writing, read_checkpoint, read_run, save_checkpoint)
from .runstate import _check_output_dir, _config_diff, _flatten  # noqa: F401  (their old home)
from .scaling import MAX_SKIPPED_IN_A_ROW, LossScaling
from .tasks import Task, get_task

__all__ = ["finetune", "run_from_cli", "param_groups", "lr_lambda", "read_checkpoint", "save_checkpoint",
           "read_run", "TrainingDivergedError", "RunOutputError", "RESUME_MUTABLE_KEYS", "CHECKPOINT_FORMAT",
           "RUN_OUTPUTS", "code_provenance"]


class TrainingDivergedError(ZooError, FloatingPointError):
    """The training loss (or the weights) became NaN or infinite."""


# ---- small helpers --------------------------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"invalid value for config key 'train.device': {name!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    return dev


_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_CPU_FP16_FLAGS = ("avx512_fp16", "amx_fp16")


def _cpu_flags() -> Optional[set]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); None where that cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls in hardware: a CUDA device that supports bf16, or a CPU with
    AVX512-BF16 or AMX-BF16 (elsewhere oneDNN emulates bf16, many times slower than float32: 50x for a 512x512
    matmul on an AVX2 CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = _cpu_flags()
    if flags is not None:
        return any(f in flags for f in _CPU_BF16_FLAGS)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _autocast(amp: str, device: torch.device):
    """A factory of autocast contexts and the precision it gives ("bf16", "fp16" or None).  "auto": bf16 where the
    device computes it natively (`bf16_native`), else none; "bf16": bf16 on any device (a warning where it is
    emulated); "fp16": fp16 on any device (a warning on a CPU without AVX512-FP16 / AMX-FP16; the engine adds a
    loss scale, `LossScaling`); "off": none."""
    if amp == "off" or (amp == "auto" and not bf16_native(device)):
        return nullcontext, None
    if amp == "fp16":
        flags = _cpu_flags() if device.type == "cpu" else None
        if device.type == "cpu" and not (flags and any(f in flags for f in _CPU_FP16_FLAGS)):
            warnings.warn("train.amp=fp16 on a cpu without native fp16 (no AVX512-FP16 / AMX-FP16): fp16 is "
                          "emulated there, slower than float32; train.amp=auto uses bf16 where it is native",
                          UserWarning, stacklevel=2)
        return (lambda: torch.autocast(device_type=device.type, dtype=torch.float16)), "fp16"
    if amp == "bf16" and not bf16_native(device):
        warnings.warn(f"train.amp=bf16 on a {device.type} without native bf16 (no AVX512-BF16 / AMX-BF16): bf16 is "
                      f"emulated there, many times slower than float32; train.amp=auto uses bf16 only where it is "
                      f"native", UserWarning, stacklevel=2)
    return (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)), "bf16"


_NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "reg_token", "register_tokens", "relative_position",
                   "rel_pos", "lookup_table", "rpe")


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """AdamW groups: decay on weight matrices / kernels; none on biases, norms, 1-D params, position tables and
    every parameter of a positional encoding module, cls/register tokens, and ``model.no_weight_decay()``."""
    from ..pe.base import PositionalEncoding

    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    exempt = set()
    for _, m in model.named_modules():
        if isinstance(m, (PositionalEncoding, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) \
                or type(m).__name__.endswith("Norm"):
            exempt.update(id(p) for p in m.parameters())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if (p.ndim <= 1 or id(p) in exempt or name in skip or name.split(".")[-1] in skip
                or any(k in name for k in _NO_DECAY_NAMES)):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_lambda(total_steps: int, warmup_steps: int, min_lr_ratio: float):
    """Multiplier of the peak lr for the step with 0-based index ``s``: linear warmup to 1 over ``warmup_steps``
    steps, then cosine down to ``min_lr_ratio`` at the last step."""
    def fn(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps - 1)
        progress = min(1.0, (s - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return fn


class _GracefulInterrupt:
    """SIGINT (Ctrl-C) and SIGTERM. First: finish the current step, then stop. Second: KeyboardInterrupt at once,
    except while a checkpoint is being written (``with stop.deferred():``): then the write finishes first."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, say, escalate: bool = True) -> None:
        self.requested = False
        self._escalate = escalate          # under torchrun the agent owns the second signal and the hard kill
        self._say = say
        self._previous: Dict[int, Any] = {}
        self._deferring = 0

    def _handler(self, signum, frame) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self._deferring:
            self.requested = True
            self._say(f"{name}: writing the checkpoint; stopping when it is written")
        elif self.requested:
            if self._escalate:
                raise KeyboardInterrupt
        else:
            self.requested = True
            self._say(f"{name}: stopping after this step and saving a checkpoint ({name} again to stop now)")

    @contextmanager
    def deferred(self):
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class _Stop(Exception):
    pass


# ---- compiled training steps ----------------------------------------------------------------------------------

def _for_training(model: nn.Module, compile: bool, name: str):
    """``(the module the training steps call, a context that turns a compilation failure into a ConfigError)``.
    With ``compile``: ``torch.compile(model)``, a wrapper that shares ``model``'s parameters and buffers, so the
    state dict (checkpoints, model.safetensors) keeps its keys; it compiles at the first step (forward and
    backward), again when the batch shape changes (then with dynamic shapes)."""
    if not compile:
        return model, nullcontext
    compiled = torch.compile(model)

    @contextmanager
    def failures():
        try:
            yield
        except torch._dynamo.exc.TorchDynamoException as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
            first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]    # "backend=... raised:" + cause
            raise ConfigError(f"train.compile=true: torch.compile failed on model {name!r}: {first}; set "
                              f"train.compile=false to train it uncompiled") from e
    return compiled, failures


# ---- the data behind a run ------------------------------------------------------------------------------------


# ---- the loop -------------------------------------------------------------------------------------------------

def finetune(cfg: Any, resume: bool = False, resume_command: Optional[str] = None,
             recipe: Optional[str] = None) -> Dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.data`` as ``cfg.task`` says; returns the run summary (also written to
    ``output.dir/summary.json``). ``cfg`` is a config from :func:`load_config`, a dict or a ``FinetuneCfg``.
    ``recipe``: the config file the run comes from (``zoo finetune`` passes it), recorded in the summary with the
    commit of the code (`code_provenance`), which ``zoo export`` publishes.

    With ``resume=True`` the run continues from ``output.dir/last.pt`` exactly where it stopped. Ctrl-C saves
    ``last.pt`` and returns a summary with ``"interrupted": True``."""
    t_start = time.perf_counter()
    cfg = build_config(cfg, where="finetune() config")
    get_task(cfg.task)                            # an unknown task fails before anything is read or written
    t_cfg = cfg.train
    out_dir = Path(cfg.output.dir).expanduser()
    ckpt_path = out_dir / "last.pt"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if resume_command is None:
        resume_command = f"zoo finetune <config> output.dir={shlex.quote(str(out_dir))} --resume"

    info = dist.env_info()
    if info.enabled and t_cfg.parallel == "fsdp":       # before any data is read, the same on every rank
        for key, on in (("train.ema_decay", t_cfg.ema_decay is not None), ("train.amp=fp16", t_cfg.amp == "fp16")):
            if on:      # the EMA copies the whole model; the fp16 scale needs every rank's overflow check
                raise ConfigError(f"{key} is not supported with train.parallel=fsdp yet: use train.parallel=ddp "
                                  f"(or train.amp=bf16 for fp16)")
    created = False
    if info.enabled:
        device, created = dist.setup(info, t_cfg.device, t_cfg.dist_timeout_s)
    try:
        ckpt = _agreed(info, lambda: _check_run_dir(cfg, resolved, out_dir, ckpt_path, resume))
        if not info.enabled:
            device = _resolve_device(t_cfg.device)
        threads_before = torch.get_num_threads()
        if t_cfg.num_threads:
            torch.set_num_threads(t_cfg.num_threads)
        try:
            return _run(cfg, resume, ckpt, device, resume_command, t_start, info, recipe)
        finally:
            torch.set_num_threads(threads_before)     # a library call leaves the process as it found it
    finally:
        dist.teardown(created)


def _agreed(info: "dist.DistInfo", fn):
    """``fn()``; under torchrun a ZooError on any rank is raised on every rank (no rank waits for one that
    stopped)."""
    if not info.enabled:
        return fn()
    result, error = None, None
    try:
        result = fn()
    except ZooError as e:
        error = e
    with dist.collective(info, "the start of the run"):
        errors = dist.all_gather_objects(None if error is None else (type(error).__name__, str(error)), info)
    if error is not None:
        raise error
    for found in errors:
        if found is not None:
            raise ConfigError(f"another rank stopped the run: {found[1]}")
    return result


def _weights_finite(model: nn.Module, info: "dist.DistInfo") -> bool:
    """Whether every weight is finite (FSDP2: every rank's shards, all-reduced)."""
    params = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    ok = torch.stack([torch.isfinite(p).all() for p in params if p.numel()]).all() if params else torch.tensor(True)
    if info.enabled and any(hasattr(p, "to_local") for p in model.parameters()):
        flag = (~ok).double().reshape(1)
        with dist.collective(info, "the weight check"):
            dist.all_reduce_sum(flag)
        return bool(flag.item() == 0)
    return bool(ok)


def code_provenance(recipe: Optional[str] = None) -> Dict[str, Any]:
    """``{"recipe", "commit", "dirty"}``: the recipe as its results row names it (`zoo.results.recipe_key`, None
    when not given), ``git rev-parse HEAD`` of the zoo checkout and whether its tree has uncommitted changes (both
    None outside a git checkout, e.g. an installed zoo)."""
    from ..results import _git, recipe_key, source_root

    root = source_root()
    head = _git(root, "rev-parse", "HEAD") if root is not None else None
    commit = head.stdout.strip() if head is not None and head.returncode == 0 else None
    status = _git(root, "status", "--porcelain") if commit else None
    dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
    return {"recipe": recipe_key(recipe, root) if recipe else None, "commit": commit, "dirty": dirty}


def _run(cfg: DictConfig, resume: bool, ckpt: Optional[Dict[str, Any]], device: torch.device,
         resume_command: str, t_start: float, info: "dist.DistInfo" = dist.DistInfo(),
         recipe: Optional[str] = None) -> Dict[str, Any]:
    t_cfg, o_cfg = cfg.train, cfg.optim
    out_dir = Path(cfg.output.dir).expanduser()
    ckpt_path, metrics_path = out_dir / "last.pt", out_dir / "metrics.jsonl"
    summary_path, weights_path = out_dir / "summary.json", out_dir / "model.safetensors"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    provenance = code_provenance(recipe)            # the code this run trains with (recorded in the summary)
    task_cls = get_task(cfg.task)
    autocast, amp_name = _autocast(t_cfg.amp, device)
    scaling = LossScaling(device, enabled=amp_name == "fp16")

    _seed_everything(t_cfg.seed)
    task: Task = task_cls()
    task.resume_dir = out_dir if ckpt is not None else None
    task.build_data(cfg)
    data_fingerprint = _data_fingerprint(resolved["data"], out_dir)     # after build_data: a download fills data.root
    if ckpt is not None and "data_fingerprint" in ckpt:
        diff = _fingerprint_diff(ckpt["data_fingerprint"], data_fingerprint)
        if diff:
            raise ConfigError(f"cannot resume {ckpt_path}: the data differs from the checkpoint's:\n  "
                              + "\n  ".join(diff) + "\nPoint the data keys at the data the run started with, or "
                              "start a new run in another output.dir (model.pretrained_file= can start it from the "
                              "weights).")
    model_kwargs = task.model_kwargs(cfg)
    if cfg.model.get("pe") is not None:   # model.pe: the encoding swapped into the model (any zoo.pe spec that fits)
        if "pe" in model_kwargs:
            raise ConfigError("model.pe and model.kwargs.pe both set the encoding: keep one")
        model_kwargs["pe"] = _plain(cfg.model.pe)
    import zoo
    fresh = ckpt is None                  # on resume the checkpoint has the weights: skip the pretrained ones
    try:
        model = zoo.create(cfg.model.name, pretrained=cfg.model.pretrained and fresh,
                           pretrained_file=cfg.model.pretrained_file if fresh else None, **model_kwargs).to(device)
    except ConfigError as e:              # a builder argument: say which config section it came from
        raise ConfigError(f"model.name={cfg.model.name!r} with model.kwargs {_plain(cfg.model.kwargs)}: {e}") from None
    task.to(device)
    main = info.is_main                   # rank 0 alone writes and prints
    if ckpt is not None:
        zoo.load_checkpoint(model, ckpt["model"], source=str(ckpt_path))
    ema = WeightEma(model, t_cfg.ema_decay, t_cfg.ema_warmup) if t_cfg.ema_decay is not None else None
    train_model = model
    if info.enabled:                      # every rank built the same weights from the same seed
        train_model = dist.wrap_model(model, info, t_cfg.parallel, device, t_cfg.find_unused_parameters)
        if info.rank:
            torch.manual_seed(_rank_seed(t_cfg.seed, info.rank))
    # compiled after wrapping (DDP / FSDP2 hooks stay outside the graph); the same parameters as ``model``
    step_model, compile_failures = _for_training(train_model, t_cfg.compile, cfg.model.name)
    optimizer = torch.optim.AdamW(param_groups(model, o_cfg.weight_decay), lr=o_cfg.lr,
                                  betas=tuple(o_cfg.betas), eps=o_cfg.eps)

    accum, nb = t_cfg.accumulation, task.num_train_batches()
    steps_per_epoch = math.ceil(nb / accum)
    total_steps = t_cfg.steps if t_cfg.steps is not None else t_cfg.epochs * steps_per_epoch
    warmup = o_cfg.warmup_steps or int(round(o_cfg.warmup_ratio * total_steps))
    schedule = lr_lambda(total_steps, warmup, o_cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    step, epoch, batch_pos = 0, 0, 0
    best: Dict[str, Any] = {}
    last_eval: Dict[str, Any] = {}
    last_eval_raw: Dict[str, Any] = {}    # with an EMA: the raw weights' metrics (last_eval is the EMA's)
    elapsed_before, train_time_before, samples_before = 0.0, 0.0, 0
    saved_step: Optional[int] = None      # the step of the checkpoint on disk (the last good one)
    window: Dict[str, Any] = {}
    if ckpt is not None:
        dist.load_optimizer_state(train_model, optimizer, ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # the schedule may have a new horizon (train.steps changed): recompute the lr of the next step
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * schedule(scheduler.last_epoch)
        step, epoch, batch_pos = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        saved_step = step
        best, last_eval = dict(ckpt.get("best") or {}), dict(ckpt.get("last_eval") or {})
        elapsed_before, train_time_before = ckpt.get("elapsed_s", 0.0), ckpt.get("train_time_s", 0.0)
        samples_before = ckpt.get("samples", 0)
        window = dict(ckpt.get("log_window") or {})
        last_eval_raw = dict(ckpt.get("last_eval_raw") or {})
        scaling.load_state_dict(ckpt.get("loss_scaling"))
        if ema is not None:
            if not ckpt.get("ema"):
                raise CheckpointError(f"{ckpt_path} holds no EMA weights though train.ema_decay is set")
            ema.load_state_dict(ckpt["ema"])
        rngs = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(rngs) == info.world_size:          # each rank continues its own streams
            _set_rng_state(rngs[info.rank])
        else:                                     # another number of ranks: rank 0's, fresh dropout streams elsewhere
            _set_rng_state(ckpt["rng"])
            if info.rank:
                torch.manual_seed(_rank_seed(t_cfg.seed + step, info.rank))
        if batch_pos >= nb:
            raise CheckpointError(f"{ckpt_path}: position {batch_pos} in an epoch of {nb} micro-batches; "
                                  "the training data changed since the checkpoint")

    artifacts: List[str] = []
    if main:
        with _writing(out_dir, "the run folder"):
            out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(out_dir)           # left by a save that was killed (kill -9, power loss)
            if ckpt is None:
                for p in (metrics_path, summary_path, weights_path, ckpt_path):   # output.overwrite: a clean slate
                    if p.exists():
                        p.unlink()
        with _writing(out_dir / "config.yaml", "the config"):
            atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        with _writing(out_dir, "the task's files into"):
            artifacts = [str(a) for a in (task.save_artifacts(out_dir) or [])]
    if main and ckpt is not None and metrics_path.exists():
        # drop lines logged after the checkpoint by a run that was killed: they are about to be redone
        keep = [ln for ln in metrics_path.read_text().splitlines() if _logged_step(ln) <= step]
        with _writing(metrics_path, "the metrics"):
            atomic_write_text(metrics_path, "".join(ln + "\n" for ln in keep))

    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bar = None
    if t_cfg.progress and main:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=step, desc=f"finetune {cfg.model.name}", dynamic_ncols=True,
                   unit="step", disable=not t_cfg.progress)

    def say(msg: str) -> None:
        if not main:
            return
        if bar is not None:
            bar.write(msg)
        else:
            print(msg, flush=True)

    metrics_file = None
    if main:
        with _writing(metrics_path, "the metrics"):
            metrics_file = open(metrics_path, "a", encoding="utf-8")

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    def log(event: str, **fields: Any) -> None:
        if metrics_file is None:
            return
        rec = {"event": event, "step": step, "epoch": round(step / steps_per_epoch, 4), **fields,
               "elapsed_s": round(elapsed(), 3)}
        with _writing(metrics_path, "the metrics"):
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()

    def check_finite(weights: bool) -> None:
        """Raise TrainingDivergedError when a step's loss was NaN/inf (or, with ``weights``, a weight is)."""
        bad_step = int(first_bad.item())              # the one device sync, at log steps, evals and saves
        stuck = scaling.stuck_step()
        if bad_step >= 0:
            what = f"the training loss is not finite (nan or inf) at step {bad_step}"
            if amp_name == "fp16":
                what += " (float16 overflows above 65504: train.amp=bf16 or off may not)"
        elif stuck is not None:
            what = (f"the gradients were not finite at {MAX_SKIPPED_IN_A_ROW} steps in a row up to step {stuck}, "
                    f"each skipped by the fp16 loss scale (now {scaling.scaler.get_scale():.3g})")
        elif weights and not _weights_finite(model, info):
            what = f"the weights are not finite (nan or inf) after step {step}, though the loss was: the " \
                   f"gradients overflowed"
        else:
            return
        where = (f"The last good checkpoint is {ckpt_path} (step {saved_step})" if saved_step is not None else
                 "No checkpoint was written (the run diverged before its first save)")
        raise TrainingDivergedError(f"{what}; lower optim.lr (now {o_cfg.lr}) or keep optim.clip_grad set. "
                                    f"{where}.")

    def save(rng: Dict[str, Any]) -> None:
        nonlocal saved_step
        check_finite(weights=True)                     # a diverged run never replaces the last good checkpoint
        if info.enabled:                               # gathered on every rank (FSDP2 shards, each rank's RNG)
            with dist.collective(info, f"the checkpoint of step {step}"):
                model_sd, optim_sd = dist.model_state(train_model), dist.optimizer_state(train_model, optimizer)
                rngs = dist.all_gather_objects(rng, info)
        else:
            model_sd, optim_sd, rngs = model.state_dict(), optimizer.state_dict(), [rng]
        if not main:
            saved_step = step
            return
        state = {"format": CHECKPOINT_FORMAT, "model": model_sd, "optimizer": optim_sd,
                 "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch, "batch_in_epoch": batch_pos,
                 "rng": rngs[0], "rng_ranks": rngs, "world_size": info.world_size, "config": resolved,
                 "model_kwargs": _plain(model_kwargs), "best": best,
                 "last_eval": last_eval, "elapsed_s": elapsed(), "train_time_s": train_time, "samples": samples,
                 "data_fingerprint": data_fingerprint, "loss_scaling": scaling.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None, "last_eval_raw": last_eval_raw,
                 # the logging window so far: the resumed run logs the same means as an uninterrupted one
                 "log_window": {"loss_sum": loss_sum.item(), "steps": loss_steps, "samples": log_samples,
                                "time_s": log_time}}
        with stop.deferred():                          # a signal now waits for the write
            save_checkpoint(ckpt_path, state)
        saved_step = step

    def evaluate(m: nn.Module) -> Dict[str, float]:
        """The task's metrics of ``m``; under torchrun each rank evaluates its share where the task can
        (`Task.eval_sums`, all-reduced), else the whole split (an FSDP2 model needs every rank in each forward)."""
        if info.enabled and (t_cfg.parallel == "ddp" or m is not train_model):   # FSDP2: the same forwards
            sums = task.eval_sums(m, t_cfg.eval_batch_size, info.rank, info.world_size)
            if sums is not None:
                keys = sorted(sums)
                packed = torch.stack([sums[k].double().to(device) for k in keys])
                dist.all_reduce_sum(packed)
                return task.eval_metrics({k: packed[i] for i, k in enumerate(keys)})
        return task.evaluate(m, batch_size=t_cfg.eval_batch_size)

    def run_eval() -> Dict[str, float]:
        nonlocal best, last_eval, last_eval_raw
        check_finite(weights=True)
        t0 = time.perf_counter()
        with autocast(), dist.collective(info, f"the evaluation at step {step}"):
            metrics = evaluate(dist.unwrap(train_model))
            # with an EMA, its metrics are the run's (best, final, the weights written); the raw ones are logged
            raw = evaluate(ema.module) if ema is not None else None
        train_model.train()
        metrics = {k: float(v) for k, v in metrics.items()}
        if raw is not None:
            metrics, raw = {k: float(v) for k, v in raw.items()}, metrics
            last_eval_raw = {"step": step, **raw}
        last_eval = {"step": step, **metrics}
        key, mode = task.main_metric, task.main_mode
        if key in metrics and (not best or (metrics[key] > best[key] if mode == "max" else metrics[key] < best[key])):
            best = {"step": step, **metrics}
        log("eval", **{f"eval_{k}": v for k, v in metrics.items()},
            **{f"eval_raw_{k}": v for k, v in (raw or {}).items()}, eval_time_s=round(time.perf_counter() - t0, 3))
        say(f"step {step}/{total_steps} epoch {step / steps_per_epoch:.2f}: "
            + ", ".join(f"eval {'ema ' if raw is not None else ''}{k} {v:.4f}" for k, v in metrics.items())
            + "".join(f", raw {k} {v:.4f}" for k, v in (raw or {}).items()))
        return metrics

    samples, train_time = samples_before, train_time_before
    loss_sum = torch.tensor(float(window.get("loss_sum", 0.0)), dtype=torch.float64, device=device)
    loss_steps, log_samples = int(window.get("steps", 0)), int(window.get("samples", 0))
    log_time = float(window.get("time_s", 0.0))
    first_bad = torch.full((), -1, dtype=torch.long, device=device)   # first step whose loss was not finite
    interrupted = False
    in_update = False
    rng_boundary = _rng_state()
    clip = o_cfg.clip_grad
    train_model.train()
    batches = None
    weigh = accum > 1 or info.enabled        # gradients as sums over terms, divided by the global count
    stop_all = False                         # the all-reduced stop flag (under torchrun)

    def say_any_rank(msg: str) -> None:             # a signal may reach any rank: it says so on its own
        say(msg) if main else print(f"rank {info.rank}: {msg}", flush=True)

    with _GracefulInterrupt(say_any_rank, escalate=not info.enabled) as stop:
        try:
            while step < total_steps:
                if batches is None:
                    batches = device_batches(task.train_batches(epoch, _epoch_generator(t_cfg.seed, epoch),
                                                                start=batch_pos), device, t_cfg.prefetch)
                t0 = time.perf_counter()
                k = min(accum, nb - batch_pos)
                optimizer.zero_grad(set_to_none=True)
                step_loss = torch.zeros((), dtype=torch.float64, device=device)
                step_n = torch.zeros((), dtype=torch.float64, device=device)
                step_samples = 0
                for j in range(k):
                    batch, has_rows = next(batches), True
                    step_samples += task.batch_samples(batch)
                    if info.enabled:
                        batch, has_rows = task.shard(batch, info.rank, info.world_size)
                    with dist.grad_sync(train_model, sync=j == k - 1), compile_failures(), \
                            dist.collective(info, f"step {step + 1}"):      # inner micro-batches: no all-reduce
                        with autocast():
                            loss, n = task.loss(step_model, batch)
                        if not has_rows:
                            n = n * 0                   # a rank without rows: weight 0, still in the all-reduce
                        scaling.backward(loss * n if weigh else loss)
                    step_loss += loss.detach().double() * n
                    step_n += n
                if info.enabled:                        # one all-reduce: loss, terms, and whether any rank stops
                    flags = torch.stack([step_loss, step_n, step_loss.new_tensor(float(stop.requested))])
                    with dist.collective(info, f"step {step + 1}"):
                        dist.all_reduce_sum(flags)
                    step_loss, step_n, stop_all = flags[0], flags[1], bool(flags[2] > 0)
                if weigh:                               # DDP / FSDP2 averaged over ranks: x world / global terms
                    scale = info.world_size / max(float(step_n), 1.0) if info.enabled else step_n.clamp(min=1)
                    for p in model.parameters():
                        if p.grad is not None:
                            if info.enabled:
                                p.grad.mul_(scale)
                            else:
                                p.grad.div_(scale)
                grad_norm = scaling.clip(optimizer, model.parameters(), clip)
                lr = optimizer.param_groups[0]["lr"]
                in_update = True
                scaling.step(optimizer, scheduler, grad_norm, step + 1)   # fp16: skipped if gradients overflowed
                if ema is not None:               # after every step, one skipped by fp16's scale too (as timm)
                    ema.update(model, step + 1)
                step += 1
                batch_pos += k
                samples += step_samples
                epoch_end = batch_pos >= nb
                if epoch_end:
                    batches.close()
                    epoch, batch_pos, batches = epoch + 1, 0, None
                in_update = False
                rng_boundary = _rng_state()
                # no sync: remember the first non-finite step on the device, look at it when the host needs to
                first_bad.masked_fill_((first_bad < 0) & ~torch.isfinite(step_loss), step)
                loss_sum += step_loss / step_n.clamp(min=1)
                loss_steps += 1
                log_samples += step_samples
                dt = time.perf_counter() - t0
                train_time += dt
                log_time += dt

                if step % t_cfg.log_every == 0 or step == total_steps or epoch_end:
                    check_finite(weights=False)
                    mean_loss = loss_sum.item() / loss_steps
                    fields = {"loss": mean_loss, "lr": lr, "samples_per_s": round(log_samples / max(log_time, 1e-9), 2)}
                    if grad_norm is not None:     # fp16: not finite at a skipped step
                        fields["grad_norm"] = float(grad_norm) if math.isfinite(grad_norm) else None
                    log("train", **fields, **scaling.log_fields())
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", ep=f"{step / steps_per_epoch:.2f}")
                    loss_sum.zero_()
                    loss_steps, log_samples, log_time = 0, 0, 0.0
                if bar is not None:
                    bar.update(1)
                if (t_cfg.eval_every and step % t_cfg.eval_every == 0) or (t_cfg.eval_every is None and epoch_end):
                    run_eval()
                if (t_cfg.save_every and step % t_cfg.save_every == 0) or epoch_end:
                    save(rng_boundary)
                if stop_all if info.enabled else stop.requested:    # every rank stops after the same step
                    raise _Stop
            if last_eval.get("step") != step:
                run_eval()
        except (KeyboardInterrupt, _Stop):
            # no partial log line: the window's sums go into the checkpoint and the resumed run logs the window
            interrupted = True
        finally:
            if batches is not None:
                batches.close()                  # stops the prefetch thread
            if bar is not None:
                bar.close()
            if metrics_file is not None:
                metrics_file.close()

        with stop.deferred():                # from here on a signal waits: the run is being written out
            if interrupted:
                if in_update:
                    say(f"interrupted while updating the weights at step {step + 1}: the previous checkpoint "
                        f"{ckpt_path} is kept")
                else:
                    save(rng_boundary)
                say(f"interrupted at step {step}/{total_steps}; checkpoint saved to {ckpt_path}\n"
                    f"resume with: {resume_command}")
            else:
                save(rng_boundary)
                from ..hub import save_state_dict
                if ema is not None:                  # the EMA's weights (the same on every rank)
                    final = ema.weights_like(model)
                else:
                    with dist.collective(info, "gathering the final weights"):
                        final = dist.model_state(train_model) if info.enabled else model.state_dict()
                if main:
                    with _writing(weights_path, "the weights"):
                        save_state_dict({k: v.detach().cpu() for k, v in final.items()}, weights_path)

            wall = elapsed()
            summary = {
                "model": cfg.model.name, "task": cfg.task, "data": task.describe(),
                "model_kwargs": _plain(model_kwargs), "steps": step, "total_steps": total_steps,
                "epochs": round(step / steps_per_epoch, 4), "steps_per_epoch": steps_per_epoch,
                "final": {k: v for k, v in last_eval.items() if k != "step"},
                "final_step": last_eval.get("step"), "best": best, "main_metric": task.main_metric,
                "ema_decay": t_cfg.ema_decay,
                "params": n_params, "trainable_params": n_trainable, "wall_time_s": round(wall, 3),
                "train_time_s": round(train_time, 3),
                "samples_per_s": round((samples - samples_before) / max(train_time - train_time_before, 1e-9), 2),
                "device": str(device), "amp": amp_name or "off", "interrupted": interrupted,
                "world_size": info.world_size, "parallel": t_cfg.parallel if info.enabled else None,
                "batch_size": t_cfg.batch_size, "per_rank_batch": math.ceil(t_cfg.batch_size / info.world_size),
                "output_dir": str(out_dir), "checkpoint": str(ckpt_path),
                "weights": None if interrupted else str(weights_path), "artifacts": artifacts,
                **provenance,
            }
            if ema is not None:                  # the raw weights' metrics beside the EMA's "final"
                summary["final_raw"] = {k: v for k, v in last_eval_raw.items() if k != "step"}
            if amp_name == "fp16":
                summary["skipped_steps"] = int(scaling.skipped.item())
            if interrupted:
                summary["resume_command"] = resume_command
            if main:
                with _writing(summary_path, "the run summary"):
                    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, say)
    return summary


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; inf for a line that cannot be read (cut off by a kill)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _plain(d: Any) -> Any:
    if isinstance(d, DictConfig):
        return OmegaConf.to_container(d, resolve=True)
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)) or OmegaConf.is_list(d):
        return [_plain(v) for v in d]
    return d


def _print_summary(s: Dict[str, Any], say) -> None:
    head = "interrupted" if s["interrupted"] else "done"
    lines = [f"{head}: {s['model']} on {s['data'].get('dataset', '?')}, step {s['steps']}/{s['total_steps']} "
             f"({s['epochs']} epochs), {s['params']:,} params, {s['wall_time_s']:.1f} s wall, "
             f"{s['samples_per_s']:.0f} samples/s on {s['device']}"
             + (f" x {s['world_size']} ranks ({s['parallel']})" if s.get("world_size", 1) > 1 else "")]
    if s["final"]:
        lines.append("  final (step {}{}): {}".format(s["final_step"], ", EMA" if s.get("final_raw") else "", ", ".join(
            f"{k} {v:.4f}" for k, v in s["final"].items())))
    if s.get("final_raw"):
        lines.append("  final (step {}, raw): {}".format(s["final_step"], ", ".join(
            f"{k} {v:.4f}" for k, v in s["final_raw"].items())))
    if s["best"]:
        lines.append("  best  (step {}): {}".format(s["best"]["step"], ", ".join(
            f"{k} {v:.4f}" for k, v in s["best"].items() if k != "step")))
    lines.append(f"  outputs: {s['output_dir']} (summary.json, metrics.jsonl, last.pt"
                 + (", model.safetensors" if s["weights"] else "")
                 + "".join(f", {a}" for a in s.get("artifacts", [])) + ")")
    say("\n".join(lines))


def run_from_cli(config_path: str, overrides: Iterable[str] = (), resume: bool = False) -> Dict[str, Any]:
    """``zoo finetune CONFIG [key=value ...] [--resume]``: load, check and run; returns the summary
    (``summary["interrupted"]`` is True after Ctrl-C; the CLI exits 130 then)."""
    overrides = list(overrides)
    cfg = load_config(config_path, overrides)
    command = " ".join([*_launcher(), "finetune", shlex.quote(str(config_path)), *map(shlex.quote, overrides),
                        "--resume"])
    return finetune(cfg, resume=resume, resume_command=command, recipe=str(config_path))


def _launcher() -> List[str]:
    """How this process was started, for the resume command: ``zoo``, or torchrun with its process counts."""
    info = dist.env_info()
    if not info.enabled:
        return ["zoo"]
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or info.world_size)
    if local >= info.world_size:
        return ["torchrun", "--standalone", f"--nproc_per_node={info.world_size}", "-m", "zoo"]
    return ["torchrun", f"--nnodes={info.world_size // max(local, 1)}", f"--nproc_per_node={local}",
            "<rendezvous options as before>", "-m", "zoo"]
