"""What a run keeps on disk and between sessions: the checkpoint format, the run folder's checks, the data
fingerprint, the RNG streams (per epoch, per rank) and the config keys that may change on resume.

`zoo.finetune.engine` drives the loop with these; its docstring describes what a run writes.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import DictConfig

from ..errors import CheckpointError, ConfigError, ZooError
from ..io import atomic_write
from .config import data_schema, saved_config

__all__ = ["CHECKPOINT_FORMAT", "RESUME_MUTABLE_KEYS", "RUN_OUTPUTS", "RunOutputError", "save_checkpoint",
           "read_checkpoint", "read_run", "read_summary"]


CHECKPOINT_FORMAT = "zoo.finetune/1"


# config keys that may differ between a checkpoint and the run resuming it (they do not change the trajectory);
# the data keys among them are the task's (``data_schema.resume_mutable``)
# train.amp may change (a resume on another device), though it changes the numbers: fp16's loss scale is kept in the
# checkpoint and restored when the resumed run uses fp16 too. train.ema_decay / ema_warmup may not (another EMA).
RESUME_MUTABLE_KEYS = frozenset({
    "train.epochs", "train.steps", "train.eval_every", "train.eval_batch_size", "train.device", "train.amp",
    "train.num_threads", "train.progress", "train.log_every", "train.save_every", "train.compile",
    "train.prefetch", "output.dir", "output.overwrite", "train.parallel", "train.dist_timeout_s",
    "train.find_unused_parameters",
})


# what a run writes into output.dir (besides the task's artifacts): a fresh run does not replace any of them unasked
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "last.pt", "model.safetensors", "summary.json")


class RunOutputError(ZooError, OSError):
    """Writing a run's outputs failed (a full disk, a permission, a read-only file system); ``errno`` is the
    cause's."""


@contextmanager
def _writing(path: Path, what: str):
    """Turn an OSError of the writes in the block into a RunOutputError naming ``what``, ``path`` and the cause."""
    try:
        yield
    except OSError as e:
        if isinstance(e, ZooError):
            raise
        err = RunOutputError(f"cannot write {what} {path}: {e.strerror or e}")
        err.errno = e.errno
        raise err from e


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(_flatten(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
    return out


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) into independent streams: epoch e of seed s != epoch e+1 of seed s-1
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rng_state() -> Dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _KeepWriteError:
    """The file handed to torch.save: torch reports a failed write as a RuntimeError of its own ("enforce fail at
    inline_container.cc"); this keeps the OSError (ENOSPC, EIO) so that the caller sees the real cause."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: Path, state: Dict[str, Any]) -> Path:
    """Write ``state`` with torch.save to a temporary file next to ``path``, then rename: never half-written. A
    failed write raises RunOutputError (an OSError with the cause's errno) and leaves ``path`` as it was."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            out = _KeepWriteError(f)
            try:
                torch.save(state, out)
            except RuntimeError:
                if out.error is not None:
                    raise out.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
    with _writing(path, "the checkpoint"):
        return atomic_write(path, write)


def read_checkpoint(path: Path) -> Dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0] if str(e) else e!r}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a zoo fine-tuning checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def read_run(run_dir: Union[str, Path], task: str, extra_files: Sequence[Tuple[Path, str]] = ()
             ) -> Tuple[str, Dict[str, Any], Path]:
    """``(model name, model kwargs, weights path)`` of a finished ``task`` run folder: ``summary.json`` and
    ``model.safetensors`` must be there, and every ``(path, what)`` of ``extra_files`` (e.g. the tokenizer); a
    missing file or an unreadable summary raises CheckpointError."""
    run_dir = Path(run_dir)
    summary, weights = read_summary(run_dir, task), run_dir / "model.safetensors"
    for path, what in ((weights, "the weights"), *extra_files):
        if not path.is_file():
            raise CheckpointError(f"{run_dir} is not a finished {task} run: {path.name} ({what}) is missing")
    return summary["model"], dict(summary["model_kwargs"]), weights


def read_summary(run_dir: Union[str, Path], task: Optional[str] = None) -> Dict[str, Any]:
    """The ``summary.json`` of a run folder (of ``task`` when given), with its ``model`` and ``model_kwargs``;
    CheckpointError naming the file when it is missing or unreadable."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        kind = f"finished {task} run" if task else "finished run"
        raise CheckpointError(f"{run_dir} is not a {kind}: {path.name} (the run summary) is missing")
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary["model"], str) or not isinstance(summary["model_kwargs"], dict):
            raise TypeError("model must be a name and model_kwargs a mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable run summary ({e})") from None
    return summary


def _config_diff(saved: Dict[str, Any], now: Dict[str, Any], task: str) -> List[str]:
    a, b = _flatten(saved), _flatten(now)
    mutable = RESUME_MUTABLE_KEYS | {f"data.{k}" for k in data_schema(task).resume_mutable}
    out = []
    for key in sorted(set(a) | set(b)):
        if key in mutable:
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {a.get(key, '<unset>')!r} in the checkpoint, {b.get(key, '<unset>')!r} now")
    return out


_FINGERPRINT_MAX_FILES = 200_000


def _data_fingerprint(data_cfg: Dict[str, Any], out_dir: Path) -> Dict[str, Dict[str, Any]]:
    """``{"data.<key>": {"path", "files", "bytes", "digest"}}`` for every path-valued ``data.*`` key that names an
    existing file or folder (``data.root``, a tokenizer file, ...). The digest covers the relative names and sizes
    of the files (hidden ones and ``out_dir``, which the run changes, excepted), not their folder: the same data
    moved elsewhere has the same digest."""
    out = {}
    for key, value in data_cfg.items():
        if not isinstance(value, str) or key == "name" or not (key == "root" or "/" in value or os.sep in value
                                                               or value.startswith("~")):
            continue
        path = Path(value).expanduser()
        if not path.exists():
            continue
        h, n, total = hashlib.sha256(), 0, 0
        if path.is_file():
            entries: Iterable[Tuple[str, int]] = [("", path.stat().st_size)]
        else:
            entries = _tree_sizes(path, skip=out_dir)
        for rel, size in entries:
            h.update(f"{rel}\t{size}\n".encode("utf-8", "surrogateescape"))
            n, total = n + 1, total + size
        out[f"data.{key}"] = {"path": str(path), "files": n, "bytes": total, "digest": h.hexdigest()}
    return out


def _tree_sizes(root: Path, skip: Path):
    """``(relative path, size)`` of the files under ``root`` but not under ``skip``, in a fixed order (at most
    _FINGERPRINT_MAX_FILES)."""
    count, skip = 0, os.path.realpath(skip)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) != skip)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            try:
                size = p.stat().st_size
            except OSError:                         # a dangling link: not data
                continue
            yield p.relative_to(root).as_posix(), size
            count += 1
            if count >= _FINGERPRINT_MAX_FILES:
                return


def _fingerprint_diff(saved: Dict[str, Dict[str, Any]], now: Dict[str, Dict[str, Any]]) -> List[str]:
    def show(fp: Optional[Dict[str, Any]]) -> str:
        return "nothing" if fp is None else f"{fp['path']} ({fp['files']} files, {fp['bytes']} bytes)"
    return [f"{key}: {show(saved.get(key))} in the checkpoint, {show(now.get(key))} now"
            for key in sorted(set(saved) | set(now))
            if (saved.get(key) or {}).get("digest") != (now.get(key) or {}).get("digest")]


def _check_output_dir(out_dir: Path) -> None:
    """``output.dir`` must be a folder, or creatable, and writable: say so before any data is read."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output.dir={out_dir} is an existing file, not a folder; choose another output.dir=...")
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output.dir={out_dir} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output.dir={out_dir} is not writable (no write permission on {existing}, or a "
                          f"read-only file system); choose another output.dir=...")


def _check_run_dir(cfg: DictConfig, resolved: Dict[str, Any], out_dir: Path, ckpt_path: Path,
                   resume: bool) -> Optional[Dict[str, Any]]:
    """Check ``output.dir`` (and read the checkpoint on resume) before any data is read; returns the checkpoint."""
    _check_output_dir(out_dir)
    ckpt = None
    if resume:
        if not ckpt_path.is_file():
            raise ConfigError(f"--resume: no checkpoint to resume in {out_dir} (expected {ckpt_path}); "
                              f"check output.dir, or start the run without --resume")
        ckpt = read_checkpoint(ckpt_path)
        diff = _config_diff(saved_config(ckpt["config"]), resolved, cfg.task)
        if diff:
            raise ConfigError(f"cannot resume {ckpt_path}: the config differs from the checkpoint's:\n  "
                              + "\n  ".join(diff) + "\nUse the original values, or start a new run in another "
                              "output.dir (model.pretrained_file= can start it from the weights).")
    elif not cfg.output.overwrite:
        found = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
        if found:
            raise ConfigError(f"{out_dir} already holds a run ({', '.join(found)}); "
                              + ("continue it with --resume, or " if ckpt_path.name in found else "")
                              + "pass output.overwrite=true to replace it, or choose another output.dir=...")
    return ckpt


def _rank_seed(seed: int, rank: int) -> int:
    """The torch seed of rank ``rank`` > 0 (dropout, stochastic depth): independent of the other ranks'."""
    state = np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])
