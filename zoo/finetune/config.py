"""Fine-tuning configuration: an omegaconf structured schema, a YAML file and ``key=value`` overrides.

    cfg = load_config("configs/vision/vit_irpe_tiny_fmnist.yaml", ["optim.lr=5e-4", "train.epochs=1"])

The schema is strict: an unknown or mistyped key, in the file or in an override, is an error that names the key,
where it came from and the closest valid key. ``model.kwargs`` is the one free-form mapping (it goes to the model
builder as is).

Each task owns its ``data`` section: ``task`` (required, from the file or an override) names a registered task whose
``data_schema`` (a dataclass extending `DataCfg`, declared in the task's own module with its defaults and its
``check`` of the values) becomes the schema of ``data``. A data key of another task is refused naming the tasks that
use it. A config saved by a run before the data schemas were per task (one ``data`` section holding every task's
keys, the unused ones null) still loads: its null and unused-default keys are read as unset (`saved_config`).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple, Union

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError

__all__ = ["ModelCfg", "DataCfg", "OptimCfg", "TrainCfg", "OutputCfg", "FinetuneCfg", "load_config",
           "build_config", "saved_config", "valid_keys", "data_schema", "invalid_value", "check_at_least",
           "check_one_of", "FREE_FORM_KEYS", "AMP_MODES", "PARALLEL_MODES"]

AMP_MODES = ("auto", "off", "bf16", "fp16")
PARALLEL_MODES = ("ddp", "fsdp")             # under torchrun: DistributedDataParallel or FSDP2 fully_shard
# mappings whose keys are not checked against the schema (passed through to user code)
FREE_FORM_KEYS = ("model.kwargs",)


@dataclass
class ModelCfg:
    name: str = MISSING                        # registered model name, optionally name.tag
    pretrained: bool = False                   # load the tag's released weights
    pretrained_file: Optional[str] = None      # or weights from a local file / url / hf-hub id
    kwargs: Dict[str, Any] = field(default_factory=dict)   # builder kwargs; dataset defaults fill the rest
    pe: Optional[Any] = None                   # swap the encoding: a zoo.pe name or {name: ..., **kwargs}


def invalid_value(key: str, value: Any, need: str) -> ConfigError:
    """The error of a config value out of its range: ``invalid value for config key 'key': value (need)``."""
    return ConfigError(f"invalid value for config key {key!r}: {value!r} ({need})")


def check_at_least(d: Any, low: float, *keys: str, section: str = "data") -> None:
    """Each ``d.<key>`` that is set must be ``>= low``."""
    for key in keys:
        value = d[key]
        if value is not None and value < low:
            raise invalid_value(f"{section}.{key}", value, f"must be >= {low}")


def check_one_of(d: Any, key: str, choices, section: str = "data") -> None:
    """``d.<key>`` must be one of ``choices``."""
    if d[key] not in choices:
        raise invalid_value(f"{section}.{key}", d[key], "one of " + ", ".join(map(str, choices)))


@dataclass
class DataCfg:
    """The ``data`` keys every task shares. A task extends it with its own keys (``Task.data_schema``) and their
    value checks (``check``, which calls its parent's first)."""

    name: str = MISSING                        # dataset name known to the task
    root: Optional[str] = None                 # where the files are (default: the task's search path)
    train_limit: Optional[int] = None          # first N training samples only
    eval_limit: Optional[int] = None
    eval_split: str = "test"
    # keys a resumed run may change (they do not change the trajectory); a task adds its own (a cache switch)
    resume_mutable: ClassVar[FrozenSet[str]] = frozenset({"root", "eval_limit", "eval_split"})

    @classmethod
    def check(cls, d: DictConfig) -> None:
        """Raise ConfigError (`invalid_value`) for a value of ``d`` (the merged ``data`` node) out of range."""
        check_at_least(d, 1, "train_limit", "eval_limit")


# The data section every run saved before the data schemas were per task: its keys and their defaults then (null
# meant "the task's default", which is what the task schemas now state).
_SHARED_DATA_KEYS_BEFORE = {
    "name": None, "root": None, "download": False, "train_limit": None, "eval_limit": None, "augment": True,
    "eval_split": "test", "seq_len": None, "vocab_size": None, "tokenizer": None, "tokenizer_files": None,
    "languages": None, "cache": True, "tokenizer_kind": None, "k": None, "label_rank": None, "top_n": None,
    "mask_prob": None, "manuals": None, "min_freq": None, "dangling_links": None}


@dataclass
class OptimCfg:
    lr: float = 1e-3                           # AdamW peak learning rate
    weight_decay: float = 0.05                 # not applied to biases, norms, 1-D params, PE tables, cls token
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0                      # linear warmup; when 0, warmup_ratio * total steps
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.01                 # cosine decays to lr * min_lr_ratio
    clip_grad: Optional[float] = 1.0           # max global grad norm; null = no clipping


@dataclass
class TrainCfg:
    epochs: Optional[int] = 1
    steps: Optional[int] = None                # optimizer steps; overrides epochs when set
    batch_size: int = 128                      # per micro-batch, global: under torchrun split across the ranks
    accumulation: int = 1                      # micro-batches per optimizer step
    eval_every: Optional[int] = None           # steps; null = at the end of each epoch
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "auto"                       # auto = cuda if available else cpu
    amp: str = "auto"                          # auto = bf16 autocast where the device has native bf16 (CUDA,
                                               # AVX512-BF16 / AMX CPUs), else off; "off" | "bf16" | "fp16"
                                               # (fp16 autocast + a dynamic loss scale: torch.amp.GradScaler)
    ema_decay: Optional[float] = None          # keep an EMA of the weights (e.g. 0.999), evaluated beside them;
                                               # its metrics define best/final and model.safetensors
    ema_warmup: bool = True                    # decay ramps up as 1 - (1 + t)^(-2/3) (timm's ModelEmaV3 warmup)
    compile: bool = False                      # torch.compile the model for the training steps (eval: eager)
    prefetch: int = 0                          # micro-batches prepared ahead in a background thread (0 = none)
    label_smoothing: float = 0.0
    num_threads: Optional[int] = None          # torch.set_num_threads
    progress: bool = True                      # tqdm progress bar
    log_every: int = 10                        # steps between metrics.jsonl lines
    save_every: Optional[int] = None           # steps between checkpoints (always at epoch end and at the end)
    parallel: str = "ddp"                      # under torchrun: ddp | fsdp (FSDP2 fully_shard per block)
    dist_timeout_s: float = 600.0              # under torchrun: a collective waiting longer fails the run
    find_unused_parameters: bool = False       # DDP: for models whose forward skips parameters


@dataclass
class OutputCfg:
    dir: str = "runs/${model.name}"
    overwrite: bool = False                    # allow a fresh run to replace a run already in dir


@dataclass
class FinetuneCfg:
    task: str = MISSING                        # a registered task (`zoo.finetune.list_tasks`); it owns ``data``
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    output: OutputCfg = field(default_factory=OutputCfg)


# ---- the schema of a task -----------------------------------------------------------------------------------

def data_schema(task: str, where: str = "config") -> type:
    """The dataclass of ``data`` for ``task`` (its ``data_schema``; `DataCfg` when it declares none); an unknown task
    is a ConfigError naming the closest registered task."""
    from .tasks import get_task, list_tasks

    if not isinstance(task, str):
        raise ConfigError(f"config key 'task' in {where} must be a task name (a str), got {type(task).__name__} "
                          f"{task!r}")
    known = list_tasks()
    if task not in known:
        close = difflib.get_close_matches(task, known, n=1, cutoff=0.5)
        raise ConfigError(f"unknown task {task!r} (config key 'task' in {where})"
                          + (f"; did you mean {close[0]!r}? " if close else "; ")
                          + f"available tasks: {', '.join(known)}")
    cls = getattr(get_task(task), "data_schema", DataCfg)
    if not (isinstance(cls, type) and is_dataclass(cls) and issubclass(cls, DataCfg)):
        raise TypeError(f"task {task!r}: data_schema must be a dataclass extending zoo.finetune.DataCfg, got {cls!r}")
    return cls


def _schema(task: Optional[str] = None) -> DictConfig:
    if task is None:
        return OmegaConf.structured(FinetuneCfg)
    return OmegaConf.structured(FinetuneCfg(task=task, data=data_schema(task)()))


def _keys(node: DictConfig, prefix: str = "") -> List[str]:
    out = []
    for key in node.keys():
        full = f"{prefix}{key}"
        out.append(full)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and full not in FREE_FORM_KEYS:
            out += _keys(child, prefix=f"{full}.")
    return out


def valid_keys(task: Optional[str] = None) -> List[str]:
    """Every dotted key of ``task``'s schema, sections included (``optim``, ``optim.lr``, ...); without a task,
    the keys every task has (``data`` holding the `DataCfg` keys)."""
    return _keys(_schema(task))


def _tasks_using(data_key: str, but: str) -> List[str]:
    """The registered tasks other than ``but`` whose data schema has ``data_key``."""
    from .tasks import list_tasks

    out = []
    for task in list_tasks():
        if task == but:
            continue
        try:
            cls = data_schema(task)
        except Exception:  # a plugin that does not import here: it cannot be the one meant
            continue
        if data_key in {f.name for f in fields(cls)}:
            out.append(task)
    return out


def _suggest(full_key: str, keys: List[str]) -> Optional[str]:
    leaf = full_key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k != full_key]
    if same_leaf:                                   # right name, wrong section: train.lr -> optim.lr
        return same_leaf[0]
    close = difflib.get_close_matches(full_key, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    section = full_key.rsplit(".", 1)[0] + "." if "." in full_key else ""
    close = difflib.get_close_matches(leaf, [k[len(section):] for k in keys if k.startswith(section)
                                             and "." not in k[len(section):]], n=1, cutoff=0.5)
    return section + close[0] if close else None


def _unknown_key(full: str, root: DictConfig, where: str) -> ConfigError:
    keys = _keys(root)
    hint = _suggest(full, keys)
    task = root.get("task") if not OmegaConf.is_missing(root, "task") else None
    others = _tasks_using(full[5:], but=task) if full.startswith("data.") and full.count(".") == 1 else []
    owner = ""
    if others:
        owner = (f" (task {task!r} has no data key {full[5:]!r}; it is a data key of task"
                 f"{'s' if len(others) > 1 else ''} {', '.join(others)})")
        if hint is not None and not difflib.get_close_matches(full[5:], [hint.rsplit(".", 1)[-1]], cutoff=0.75):
            hint = None                         # the key is another task's, not a typo of one of this task's
    return ConfigError(f"unknown config key {full!r} in {where}{owner}"
                       + (f"; did you mean {hint!r}?" if hint else
                          f"; valid keys: {', '.join(keys)}" if not others else ""))


def _check_keys(raw: Any, schema: DictConfig, where: str, prefix: str = "",
                root: Optional[DictConfig] = None) -> None:
    """Raise ConfigError for the first key of ``raw`` (a plain nested dict) the schema does not know."""
    if not isinstance(raw, Mapping):
        return
    root = schema if root is None else root
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in schema.keys():
            raise _unknown_key(str(full), root, where)
        child = schema._get_node(key)
        if isinstance(child, DictConfig) and full not in FREE_FORM_KEYS:
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"config key {full!r} in {where} is a section ({', '.join(child.keys())}), "
                                  f"not a value: got {value!r}")
            _check_keys(value, child, where, prefix=f"{full}.", root=root)
        elif full in FREE_FORM_KEYS and value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"config key {full!r} in {where} must be a mapping of keyword arguments, "
                              f"got {value!r}")
        elif isinstance(child, ListConfig) and value is not None and not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {full!r} in {where} must be a list, got {value!r}")


def _lookup(raw: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(raw, Mapping) and part in raw:
            raw = raw[part]
        else:
            return "<?>"
    return raw


def _merge(base: DictConfig, other: Any, where: str) -> DictConfig:
    raw = OmegaConf.to_container(other, resolve=False) if isinstance(other, (DictConfig, ListConfig)) else other
    _check_keys(raw, base, where)
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = getattr(e, "msg", None) or str(e)
        raise ConfigError(f"invalid value for config key {key!r} in {where}: {_lookup(raw, key)!r} "
                          f"({msg.splitlines()[0]})") from None


def _parse_overrides(overrides: Iterable[str]) -> List[tuple]:
    out = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item or item.startswith("="):
            raise ConfigError(f"bad override {item!r}: expected key=value, e.g. optim.lr=5e-4")
        try:
            out.append((item, OmegaConf.from_dotlist([item])))
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override {item!r}: {str(e).splitlines()[0]}") from None
    return out


# ---- semantic checks ----------------------------------------------------------------------------------------

def _plain_value(v: Any) -> Any:
    return OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v


def _validate(cfg: DictConfig, schema: type, where: str) -> None:
    for key in ("model.name", "data.name"):
        if OmegaConf.is_missing(cfg, key.split(".")[0]) or OmegaConf.is_missing(cfg[key.split(".")[0]],
                                                                                  key.split(".")[1]):
            raise ConfigError(f"config key {key!r} is required: set it in {where} or pass {key}=...")
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve config from {where}: {str(e).splitlines()[0]}") from None

    bad = invalid_value

    # every number must be finite: nan passes every comparison below, inf reaches the optimizer
    flat = OmegaConf.to_container(cfg, resolve=True)
    for key, value in _numbers(flat):
        if not any(key.startswith(free + ".") for free in FREE_FORM_KEYS) and not math.isfinite(value):
            raise bad(key, value, "must be a finite number")

    pe = cfg.model.get("pe")
    if pe is not None and not isinstance(pe, (str, DictConfig)):
        raise bad("model.pe", _plain_value(pe), "a zoo.pe name or a mapping {name: ..., **kwargs}")
    if isinstance(pe, DictConfig) and not isinstance(pe.get("name"), str):
        raise bad("model.pe", OmegaConf.to_container(pe), "a mapping needs name: <a zoo.pe name>")

    t, o = cfg.train, cfg.optim
    if t.steps is None and t.epochs is None:
        raise ConfigError("set train.epochs or train.steps (both are null)")
    for key, value in (("train.steps", t.steps), ("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                       ("train.accumulation", t.accumulation), ("train.eval_every", t.eval_every),
                       ("train.eval_batch_size", t.eval_batch_size), ("train.num_threads", t.num_threads),
                       ("train.log_every", t.log_every), ("train.save_every", t.save_every)):
        if value is not None and value < 1:
            raise bad(key, value, "must be >= 1")
    if t.seed < 0:
        raise bad("train.seed", t.seed, "must be >= 0")
    if t.amp in ("False", "false"):      # YAML reads a bare `off` as false: amp=off means "off"
        t.amp = "off"
    if t.amp not in AMP_MODES:
        raise bad("train.amp", t.amp, f"one of {', '.join(AMP_MODES)}")
    if t.parallel not in PARALLEL_MODES:
        raise bad("train.parallel", t.parallel, f"one of {', '.join(PARALLEL_MODES)}")
    if t.dist_timeout_s <= 0:
        raise bad("train.dist_timeout_s", t.dist_timeout_s, "must be > 0 (seconds)")
    if t.ema_decay is not None and not (0.0 < t.ema_decay < 1.0):
        raise bad("train.ema_decay", t.ema_decay, "must be in (0, 1), e.g. 0.999, or null for no EMA")
    if t.prefetch < 0:
        raise bad("train.prefetch", t.prefetch, "must be >= 0 (0 = prepare batches in the training loop)")
    if not (0.0 <= t.label_smoothing < 1.0):
        raise bad("train.label_smoothing", t.label_smoothing, "must be in [0, 1)")
    if o.lr <= 0:
        raise bad("optim.lr", o.lr, "must be > 0")
    if o.eps <= 0:
        raise bad("optim.eps", o.eps, "must be > 0")
    if o.weight_decay < 0:
        raise bad("optim.weight_decay", o.weight_decay, "must be >= 0")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise bad("optim.betas", list(o.betas), "two numbers in [0, 1)")
    if o.warmup_steps < 0:
        raise bad("optim.warmup_steps", o.warmup_steps, "must be >= 0")
    if not (0.0 <= o.warmup_ratio < 1.0):
        raise bad("optim.warmup_ratio", o.warmup_ratio, "must be in [0, 1)")
    if not (0.0 <= o.min_lr_ratio <= 1.0):
        raise bad("optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    if o.clip_grad is not None and o.clip_grad <= 0:
        raise bad("optim.clip_grad", o.clip_grad, "must be > 0, or null for no clipping")
    schema.check(cfg.data)                  # the task's own data checks


def _numbers(d: Any, key: str = ""):
    """``(dotted key, value)`` of every float in a nested dict; a list's items go under the list's key."""
    if isinstance(d, float):
        yield key, d
    elif isinstance(d, dict):
        for k, v in d.items():
            yield from _numbers(v, f"{key}.{k}" if key else str(k))
    elif isinstance(d, list):
        for v in d:
            yield from _numbers(v, key)


# ---- entry points -------------------------------------------------------------------------------------------

def _task_of(raw: Mapping, overrides: List[tuple], where: str) -> Tuple[str, str]:
    """``(task name, where it was set)``: the last ``task=`` override, else the config's ``task``."""
    for item, ov in reversed(overrides):
        if "task" in ov:
            return ov["task"], f"command-line override {item!r}"
    task = raw.get("task")
    if task is None or task == MISSING:
        from .tasks import list_tasks

        def unset(key: str) -> bool:
            value = _lookup(raw, key)
            return (value in ("<?>", None, MISSING)
                    and all(OmegaConf.select(ov, key, default=None) is None for _, ov in overrides))

        missing = [key for key in ("model.name", "task", "data.name") if key == "task" or unset(key)]
        keys = " and ".join(", ".join(repr(k) for k in missing).rsplit(", ", 1))
        raise ConfigError(f"config key{'s' if len(missing) > 1 else ''} {keys} "
                          f"{'are' if len(missing) > 1 else 'is'} required: set "
                          f"{'them' if len(missing) > 1 else 'it'} in {where} or pass "
                          f"{' '.join(k + '=...' for k in missing)}; available tasks: {', '.join(list_tasks())}")
    return task, where


def _upgrade(raw: Dict[str, Any], schema: type) -> Dict[str, Any]:
    """``raw`` with a data section in the form saved before the data schemas were per task (every task's keys,
    `_SHARED_DATA_KEYS_BEFORE`) read as the task's: null keys and other tasks' keys at their old default dropped."""
    data = raw.get("data")
    if not isinstance(data, Mapping) or set(data) != set(_SHARED_DATA_KEYS_BEFORE):
        return raw
    own = {f.name for f in fields(schema)}
    data = {k: v for k, v in data.items()
            if v is not None and (k in own or v != _SHARED_DATA_KEYS_BEFORE[k])}
    return {**raw, "data": data}


def build_config(base: Union[None, Mapping, DictConfig, FinetuneCfg] = None, overrides: Iterable[str] = (),
                 where: str = "config") -> DictConfig:
    """Schema of the config's task + ``base`` (a dict, DictConfig or FinetuneCfg) + dotlist ``overrides``,
    checked."""
    if base is None:
        raw: Dict[str, Any] = {}
    elif is_dataclass(base) and not isinstance(base, type):
        raw = OmegaConf.to_container(OmegaConf.structured(base), resolve=False)
    elif isinstance(base, DictConfig):
        raw = OmegaConf.to_container(base, resolve=False)
    elif isinstance(base, Mapping):
        raw = dict(base)
    else:
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(base).__name__}")
    parsed = _parse_overrides(overrides)
    task, task_where = _task_of(raw, parsed, where)
    schema = data_schema(task, task_where)
    cfg = _schema(task)
    if raw:
        cfg = _merge(cfg, _upgrade(raw, schema), where)
    for item, ov in parsed:
        cfg = _merge(cfg, ov, f"command-line override {item!r}")
    _validate(cfg, schema, where)
    return cfg


def saved_config(saved: Mapping) -> Dict[str, Any]:
    """A config a run saved (``config.yaml``, a checkpoint's ``config``), resolved as today's schema reads it (a
    config saved in the older form gets its task's defaults); one that no longer builds comes back as saved, so
    that a comparison shows what differs."""
    try:
        return OmegaConf.to_container(build_config(saved, where="the saved config"), resolve=True)
    except ConfigError:
        return dict(saved)


def load_config(path: Union[str, Path], overrides: Iterable[str] = ()) -> DictConfig:
    """Load a fine-tuning YAML file onto the schema, apply ``key=value`` overrides and check the result."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ConfigError(f"cannot parse config file {path}: {detail}") from None
    if raw is None or (isinstance(raw, DictConfig) and len(raw) == 0):
        raw = {}
    if not isinstance(raw, (DictConfig, dict)):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got a "
                          f"{type(raw).__name__}")
    return build_config(raw, overrides, where=str(path))
