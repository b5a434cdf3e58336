"""Fine-tuning configuration: an omegaconf structured schema, a YAML file and ``key=value`` overrides.

    cfg = load_config("configs/vision/vit_irpe_tiny_fmnist.yaml", ["optim.lr=5e-4", "train.epochs=1"])

The schema is strict: an unknown or mistyped key, in the file or in an override, is an error that names the key,
where it came from and the closest valid key. ``model.kwargs`` is the one free-form mapping (it goes to the model
builder as is).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError

__all__ = ["ModelCfg", "DataCfg", "OptimCfg", "TrainCfg", "OutputCfg", "FinetuneCfg", "load_config",
           "build_config", "valid_keys", "FREE_FORM_KEYS", "AMP_MODES"]

AMP_MODES = ("auto", "off", "bf16")
# mappings whose keys are not checked against the schema (passed through to user code)
FREE_FORM_KEYS = ("model.kwargs",)


@dataclass
class ModelCfg:
    name: str = MISSING                        # registered model name, optionally name.tag
    pretrained: bool = False                   # load the tag's released weights
    pretrained_file: Optional[str] = None      # or weights from a local file / url / hf-hub id
    kwargs: Dict[str, Any] = field(default_factory=dict)   # builder kwargs; dataset defaults fill the rest


@dataclass
class DataCfg:
    name: str = MISSING                        # dataset name known to the task's domain
    root: Optional[str] = None                 # where the files are (default: the domain's search path)
    download: bool = False
    train_limit: Optional[int] = None          # first N training samples only
    eval_limit: Optional[int] = None
    augment: bool = True
    eval_split: str = "test"
    # sequence domains (code, genomics): typed here so that a typo is an error; image tasks ignore them
    seq_len: Optional[int] = None              # tokens per training window; null = the task's default
    vocab_size: Optional[int] = None           # size of the tokenizer to train; null = the task's default
    tokenizer: Optional[str] = None            # load this tokenizer (a tokenizer.json or a run folder) instead
    tokenizer_files: Optional[int] = None      # train the tokenizer on N training files only (null = all)
    languages: Optional[List[str]] = None      # keep files of these languages only (code); null = all supported
    cache: bool = True                         # cache preprocessed data (tokenized corpora) under $ZOO_HOME
    # genomics
    tokenizer_kind: Optional[str] = None       # nucleotide | kmer | codon (default nucleotide)
    k: Optional[int] = None                    # k-mer size (kmer tokenizer; default 6)
    label_rank: Optional[str] = None           # 16S taxonomy rank used as the label (default phylum)
    top_n: Optional[int] = None                # 16S: keep the N most frequent classes (default 5)
    mask_prob: Optional[float] = None          # masked-LM masking probability (default 0.15)
    # documents (seq_len = words per window, vocab_size = max word vocabulary, tokenizer = a saved word_vocab.json)
    manuals: Optional[List[str]] = None        # R manuals to use, e.g. [R-intro, R-exts]; null = all
    min_freq: Optional[int] = None             # words seen fewer times in the train split map to <unk> (default 2)
    dangling_links: Optional[str] = None       # FUNSD links to missing entities: error | drop (default error)


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
    batch_size: int = 128                      # per micro-batch
    accumulation: int = 1                      # micro-batches per optimizer step
    eval_every: Optional[int] = None           # steps; null = at the end of each epoch
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "auto"                       # auto = cuda if available else cpu
    amp: str = "auto"                          # auto = bf16 autocast on CUDA, off on CPU; "off" | "bf16"
    label_smoothing: float = 0.0
    num_threads: Optional[int] = None          # torch.set_num_threads
    progress: bool = True                      # tqdm progress bar
    log_every: int = 10                        # steps between metrics.jsonl lines
    save_every: Optional[int] = None           # steps between checkpoints (always at epoch end and at the end)


@dataclass
class OutputCfg:
    dir: str = "runs/${model.name}"
    overwrite: bool = False                    # allow a fresh run to replace a run already in dir


@dataclass
class FinetuneCfg:
    task: str = "image_classification"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    output: OutputCfg = field(default_factory=OutputCfg)


# ---- key checking -------------------------------------------------------------------------------------------

def _schema() -> DictConfig:
    return OmegaConf.structured(FinetuneCfg)


def valid_keys(node: Optional[DictConfig] = None, prefix: str = "") -> List[str]:
    """Every dotted key of the schema, sections included (``optim``, ``optim.lr``, ...)."""
    node = _schema() if node is None else node
    out = []
    for key in node.keys():
        full = f"{prefix}{key}"
        out.append(full)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and full not in FREE_FORM_KEYS:
            out += valid_keys(child, prefix=f"{full}.")
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


def _check_keys(raw: Any, schema: DictConfig, where: str, prefix: str = "") -> None:
    """Raise ConfigError for the first key of ``raw`` (a plain nested dict) the schema does not know."""
    if not isinstance(raw, Mapping):
        return
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in schema.keys():
            keys = valid_keys()
            hint = _suggest(str(full), keys)
            raise ConfigError(f"unknown config key {full!r} in {where}"
                              + (f"; did you mean {hint!r}?" if hint else f"; valid keys: {', '.join(keys)}"))
        child = schema._get_node(key)
        if isinstance(child, DictConfig) and full not in FREE_FORM_KEYS:
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"config key {full!r} in {where} is a section ({', '.join(child.keys())}), "
                                  f"not a value: got {value!r}")
            _check_keys(value, child, where, prefix=f"{full}.")
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

def _validate(cfg: DictConfig, where: str) -> None:
    for key in ("model.name", "data.name"):
        if OmegaConf.is_missing(cfg, key.split(".")[0]) or OmegaConf.is_missing(cfg[key.split(".")[0]],
                                                                                  key.split(".")[1]):
            raise ConfigError(f"config key {key!r} is required: set it in {where} or pass {key}=...")
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve config from {where}: {str(e).splitlines()[0]}") from None

    def bad(key: str, value: Any, need: str) -> ConfigError:
        return ConfigError(f"invalid value for config key {key!r}: {value!r} ({need})")

    # every number must be finite: nan passes every comparison below, inf reaches the optimizer
    flat = OmegaConf.to_container(cfg, resolve=True)
    for key, value in _numbers(flat):
        if not any(key.startswith(free + ".") for free in FREE_FORM_KEYS) and not math.isfinite(value):
            raise bad(key, value, "must be a finite number")

    t, o = cfg.train, cfg.optim
    if t.steps is None and t.epochs is None:
        raise ConfigError("set train.epochs or train.steps (both are null)")
    for key, value in (("train.steps", t.steps), ("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                       ("train.accumulation", t.accumulation), ("train.eval_every", t.eval_every),
                       ("train.eval_batch_size", t.eval_batch_size), ("train.num_threads", t.num_threads),
                       ("train.log_every", t.log_every), ("train.save_every", t.save_every),
                       ("data.train_limit", cfg.data.train_limit), ("data.eval_limit", cfg.data.eval_limit),
                       ("data.seq_len", cfg.data.seq_len), ("data.vocab_size", cfg.data.vocab_size),
                       ("data.tokenizer_files", cfg.data.tokenizer_files), ("data.k", cfg.data.k),
                       ("data.top_n", cfg.data.top_n), ("data.min_freq", cfg.data.min_freq)):
        if value is not None and value < 1:
            raise bad(key, value, "must be >= 1")
    if t.seed < 0:
        raise bad("train.seed", t.seed, "must be >= 0")
    if t.amp in ("False", "false"):      # YAML reads a bare `off` as false: amp=off means "off"
        t.amp = "off"
    if t.amp not in AMP_MODES:
        raise bad("train.amp", t.amp, f"one of {', '.join(AMP_MODES)}")
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
    if cfg.data.mask_prob is not None and not (0.0 < cfg.data.mask_prob < 1.0):
        raise bad("data.mask_prob", cfg.data.mask_prob, "must be in (0, 1)")


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

def build_config(base: Union[None, Mapping, DictConfig, FinetuneCfg] = None, overrides: Iterable[str] = (),
                 where: str = "config") -> DictConfig:
    """Schema + ``base`` (a dict, DictConfig or FinetuneCfg) + dotlist ``overrides``, checked."""
    cfg = _schema()
    if base is not None:
        if is_dataclass(base):
            base = OmegaConf.structured(base)
        elif not isinstance(base, (Mapping, DictConfig)):
            raise ConfigError(f"{where}: expected a mapping at the top level, got {type(base).__name__}")
        cfg = _merge(cfg, base, where)
    for item, ov in _parse_overrides(overrides):
        cfg = _merge(cfg, ov, f"command-line override {item!r}")
    _validate(cfg, where)
    return cfg


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
