"""Bad input for the fine-tune engine: config files and overrides (every key of the schema given a value of the
wrong type, every number given nan / inf / a negative value), empty and truncated config files and checkpoints,
output folders that are files, unwritable or hold another run, data that changed under ``--resume``, and runs
interrupted by Ctrl-C, SIGTERM, a full disk or a killed save.

Config cases are generated from the schemas (``valid_keys`` and the node types of ``FinetuneCfg``: the keys every
task shares once, then each registered task's own data keys, ``data_schema``) and data cases from the task registry
(``list_tasks``; each task's dataset name from a recipe in ``configs/`` of the same domain module), so a new config
key or task is covered at once. Training runs are one or two steps of a one-block ViT on
scikit-learn's digits.
"""
from __future__ import annotations

import errno
import functools
import json
import os
import re
import signal
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode

from zoo.errors import CheckpointError, ConfigError, ZooError
from zoo.finetune import FinetuneCfg, build_config, finetune, list_tasks, load_config, valid_keys
from zoo.finetune.config import FREE_FORM_KEYS, data_schema
from zoo.finetune.engine import RunOutputError
from zoo.finetune.tasks import task_module

from support.engine import on_loss_call

from .matrix import Case, check_case, params

ROOT = Path(__file__).resolve().parents[2]
DIGITS_MODEL = {"name": "vit_irpe_tiny", "kwargs": {"patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2}}


def digits(out, **train):
    """A run of ``steps`` (default 2) steps on 128 digits, batch 32."""
    t = {"steps": 2, "batch_size": 32, "log_every": 1, "progress": False, "num_threads": 1}
    t.update(train)
    return {"task": "image_classification", "model": json.loads(json.dumps(DIGITS_MODEL)),
            "data": {"name": "digits", "augment": False, "train_limit": 128, "eval_limit": 32},
            "train": t, "output": {"dir": str(out)}}


def merged(base: dict, key: str, value) -> dict:
    cfg = json.loads(json.dumps(base))
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return cfg


def write(path: Path, text) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


def temp_files(d: Path):
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def finished_run(tmp_path: Path, **train) -> Path:
    out = tmp_path / "run"
    finetune(digits(out, **train))
    return out


@contextmanager
def on_step(call: int, action):
    """A monkeypatch context that runs ``action()`` before the ``call``-th training micro-batch (1-based)."""
    with pytest.MonkeyPatch.context() as mp:
        on_loss_call(mp, call, lambda model: action())
        yield mp


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


# ---- the schema: every key, every number --------------------------------------------------------------------------

def schema_leaves(task=None):
    """``(dotted key, kind)`` of every value key of ``task``'s schema (without a task: the keys every task shares):
    int, float, bool, list, mapping or str."""
    schema = OmegaConf.structured(FinetuneCfg(task=task, data=data_schema(task)()) if task else FinetuneCfg)
    out = []
    for key in valid_keys(task):
        node = schema
        for part in key.split("."):
            node = node._get_node(part)
        if key in FREE_FORM_KEYS:
            out.append((key, "mapping"))
        elif isinstance(node, DictConfig):
            continue
        elif isinstance(node, ListConfig):
            out.append((key, "list"))
        else:
            kind = {IntegerNode: "int", FloatNode: "float", BooleanNode: "bool"}.get(type(node), "str")
            out.append((key, kind))
    return out


def schema_cases():
    """``(task, key, kind)``: the shared keys once (on the digits run), then each registered task's own keys (on a
    config of that task)."""
    shared = schema_leaves()
    out = [(None, key, kind) for key, kind in shared]
    for task in list_tasks():
        out += [(task, key, kind) for key, kind in schema_leaves(task) if (key, kind) not in shared]
    return out


def base_cfg(task, tmp_path):
    return digits(tmp_path / "run") if task is None else task_cfg(task, tmp_path / "run")


# a value of the wrong type for each kind of key
WRONG = {"int": "many", "float": "fast", "bool": "perhaps", "list": {"a": 1}, "mapping": [1, 2], "str": {"a": 1}}


def wrong_type_case(task, key, kind):
    def run(tmp_path):
        return build_config(merged(base_cfg(task, tmp_path), key, WRONG[kind]))
    of = f"{task}-" if task else ""
    return Case(f"config-{of}{key}-{kind}-given-{type(WRONG[kind]).__name__}", "wrong type",
                f"a {type(WRONG[kind]).__name__} for the {kind} key {key}" + (f" of task {task}" if task else "")
                + " is a ConfigError naming the key", run, raises=ConfigError, match=rf"'{re.escape(key)}'")


def out_of_range_cases(task, key, kind):
    values = {"float": [float("nan"), float("inf"), -1.0], "int": [-1]}.get(kind, [])
    if key == "optim.betas":
        values = [[float("nan"), 0.9], [0.9, float("inf")], [-0.1, 0.9]]
    of = f"{task}-" if task else ""
    for value in values:
        def run(tmp_path, value=value):
            return build_config(merged(base_cfg(task, tmp_path), key, value))
        yield Case(f"config-{of}{key}={value}", "out of range",
                   f"{key}={value}" + (f" (task {task})" if task else "")
                   + " is refused at config load with a ConfigError naming the key", run,
                   raises=ConfigError, match=rf"'{re.escape(key)}'")


# ---- the task registry: each task's data --------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def dataset_for_task(task: str) -> str:
    """A dataset name the task knows: from a recipe of the task, else of another task of the same domain module."""
    recipes = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "configs").glob("*/*.yaml"))]
    by_task = {}
    for r in recipes:
        by_task.setdefault(r["task"], r["data"]["name"])
    if task in by_task:
        return by_task[task]
    same_module = [t for t in by_task if task_module(t) == task_module(task)]
    assert same_module, f"no recipe in configs/ for task {task} or its domain"
    return by_task[same_module[0]]


def task_cfg(task, out, **data):
    return {"task": task, "model": {"name": "vit_irpe_tiny"}, "data": {"name": dataset_for_task(task), **data},
            "train": {"steps": 1, "progress": False, "num_threads": 1}, "output": {"dir": str(out)}}


def task_cases(task):
    def misspelt(tmp_path):
        return build_config(task_cfg(task, tmp_path / "run", train_limt=10))

    def unknown_dataset(tmp_path):
        cfg = task_cfg(task, tmp_path / "run")
        cfg["data"]["name"] = "no_such_dataset"
        return finetune(cfg)

    def empty_root(tmp_path):
        (tmp_path / "empty").mkdir()
        return finetune(task_cfg(task, tmp_path / "run", root=str(tmp_path / "empty")))

    def nothing_written(info, tmp_path):
        assert not (tmp_path / "run").exists()

    own = {f.name for f in fields(data_schema(task))}
    foreign = sorted({(f.name, t) for t in list_tasks() for f in fields(data_schema(t)) if f.name not in own})
    foreign_cases = []
    if foreign:
        key, owner = foreign[0]

        def other_tasks_key(tmp_path):
            return build_config(task_cfg(task, tmp_path / "run", **{key: None}))

        foreign_cases.append(Case(
            f"{task}-data-key-of-another-task", "corrupt", f"{task}: data.{key} (a key of {owner}, not of {task}) is "
            "an unknown key; the error names the tasks that use it", other_tasks_key, raises=ConfigError,
            match=rf"'data\.{key}'.*task '{task}' has no data key '{key}'.*{owner}"))

    return foreign_cases + [
        Case(f"{task}-misspelt-data-key", "corrupt", f"{task}: data.train_limt is an unknown key; the error names "
             "the closest valid key", misspelt, raises=ConfigError, match=r"'data\.train_limt'.*'data\.train_limit'"),
        Case(f"{task}-unknown-dataset", "out of range", f"{task}: an unknown data.name is a ConfigError naming it, "
             "before anything is written", unknown_dataset, raises=ConfigError, match=r"no_such_dataset",
             check=nothing_written),
        Case(f"{task}-empty-data-root", "empty", f"{task}: data.root is an empty folder: an error naming the "
             "folder, nothing written", empty_root, raises=(ZooError, OSError), match=r"/empty",
             check=nothing_written),
    ]


# ---- config files -------------------------------------------------------------------------------------------------

GOOD_YAML = "task: image_classification\nmodel:\n  name: vit_irpe_tiny\ndata:\n  name: digits\n"


def config_file_cases():
    def empty_file(tmp_path):
        return load_config(write(tmp_path / "empty.yaml", ""))

    def comments_only(tmp_path):
        return load_config(write(tmp_path / "c.yaml", "# nothing here yet\n"))

    def truncated_yaml(tmp_path):
        return load_config(write(tmp_path / "cut.yaml", GOOD_YAML + "optim: {lr: 0.1, weight_de"))

    def binary_file(tmp_path):
        return load_config(write(tmp_path / "bin.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"))

    def list_at_top(tmp_path):
        return load_config(write(tmp_path / "list.yaml", "- model\n- data\n"))

    def directory(tmp_path):
        return load_config(tmp_path)

    def missing(tmp_path):
        return load_config(tmp_path / "nope.yaml")

    def bad_kwarg_type(tmp_path):
        cfg = digits(tmp_path / "run")
        cfg["model"]["kwargs"]["depth"] = "deep"
        return finetune(cfg)

    return [
        Case("config-file-empty", "empty", "an empty config file: ConfigError naming the file and the keys it must "
             "set (model.name, task, data.name)", empty_file, raises=ConfigError,
             match=r"'model\.name', 'task' and 'data\.name' are required.*empty\.yaml"),
        Case("config-file-comments-only", "empty", "a config file of comments only: like an empty file",
             comments_only, raises=ConfigError, match=r"'model\.name', 'task' and 'data\.name' are required.*c\.yaml"),
        Case("config-file-truncated", "truncated", "a YAML file cut off mid-mapping: ConfigError naming the file",
             truncated_yaml, raises=ConfigError, match=r"cannot parse config file .*cut\.yaml"),
        Case("config-file-binary", "corrupt", "a binary file given as the config: ConfigError naming the file",
             binary_file, raises=ConfigError, match=r"bin\.yaml"),
        Case("config-file-list", "wrong type", "a YAML list at the top level: ConfigError naming the file",
             list_at_top, raises=ConfigError, match=r"list\.yaml: expected a mapping"),
        Case("config-file-directory", "adversarial path", "a folder given as the config file: ConfigError",
             directory, raises=ConfigError, match=r"config file not found: .*\(it is a directory\)"),
        Case("config-file-missing", "adversarial path", "a config file that does not exist: ConfigError naming it",
             missing, raises=ConfigError, match=r"config file not found: .*nope\.yaml"),
        Case("model-kwargs-wrong-type", "wrong type", "model.kwargs.depth='deep': ConfigError naming model.kwargs "
             "and depth, nothing written", bad_kwarg_type, raises=ConfigError, match=r"model\.kwargs.*depth",
             check=lambda info, tmp_path: not (tmp_path / "run").exists() or pytest.fail("run folder written")),
    ]


# ---- checkpoints ----------------------------------------------------------------------------------------------------

def checkpoint_cases():
    def resume_with(make):
        def run(tmp_path):
            out = finished_run(tmp_path)
            make(out / "last.pt")
            return finetune(digits(out, steps=3), resume=True)
        return run

    def truncate(p):
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def foreign(p):
        torch.save({"state_dict": {"w": torch.zeros(2)}}, p)

    def nan_weights(p):
        ckpt = torch.load(p, weights_only=True)
        ckpt["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                         for k, v in ckpt["model"].items()}
        torch.save(ckpt, p)

    def kept(info, tmp_path):
        assert (tmp_path / "run" / "model.safetensors").is_file() and temp_files(tmp_path / "run") == []

    return [
        Case("checkpoint-empty", "empty", "--resume from a 0-byte last.pt: CheckpointError naming it",
             resume_with(lambda p: p.write_bytes(b"")), raises=CheckpointError, match=r"last\.pt", check=kept),
        Case("checkpoint-truncated", "truncated", "--resume from half a last.pt: CheckpointError naming it",
             resume_with(truncate), raises=CheckpointError, match=r"cannot read checkpoint .*last\.pt", check=kept),
        Case("checkpoint-garbage", "corrupt", "--resume from random bytes: CheckpointError naming the file",
             resume_with(lambda p: p.write_bytes(os.urandom(4096))), raises=CheckpointError,
             match=r"cannot read checkpoint .*last\.pt", check=kept),
        Case("checkpoint-foreign", "corrupt", "--resume from a torch file that is not a zoo checkpoint: "
             "CheckpointError", resume_with(foreign), raises=CheckpointError,
             match=r"last\.pt is not a zoo fine-tuning checkpoint", check=kept),
        Case("checkpoint-nan-weights", "corrupt", "--resume from a checkpoint of NaN weights stops at the first "
             "step and writes no checkpoint over it", resume_with(nan_weights), raises=ZooError,
             match=r"not finite.*step 3"),
    ]


# ---- output folders and data under --resume ------------------------------------------------------------------------

def output_cases():
    def is_a_file(tmp_path):
        return finetune(digits(write(tmp_path / "results", "mine")))

    def below_a_file(tmp_path):
        return finetune(digits(write(tmp_path / "results", "mine") / "run"))

    def unwritable(tmp_path):
        out = tmp_path / "locked"
        out.mkdir()
        real = os.access
        with pytest.MonkeyPatch.context() as mp:      # as root chmod cannot lock a folder: report it unwritable
            mp.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out else real(p, mode, **kw))
            return finetune(digits(out / "run"))

    def finished_without_checkpoint(tmp_path):
        out = finished_run(tmp_path)
        (out / "last.pt").unlink()
        return finetune(digits(out))

    def other_data_root(tmp_path):
        a, b = write(tmp_path / "a" / "x.bin", b"1" * 10).parent, write(tmp_path / "b" / "x.bin", b"1" * 11).parent
        cfg = merged(digits(tmp_path / "run", steps=1), "data.root", str(a))
        finetune(cfg)
        return finetune(merged(merged(cfg, "data.root", str(b)), "train.steps", 2), resume=True)

    def file_kept(info, tmp_path):
        assert (tmp_path / "results").read_text() == "mine"

    def run_kept(info, tmp_path):
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2

    return [
        Case("output-dir-is-a-file", "adversarial path", "output.dir names an existing file: ConfigError, the file "
             "untouched", is_a_file, raises=ConfigError, match=r"output\.dir=.*results is an existing file",
             check=file_kept),
        Case("output-dir-below-a-file", "adversarial path", "output.dir below a file: ConfigError naming the path",
             below_a_file, raises=ConfigError, match=r"output\.dir=.*results/run cannot be created.*not a directory",
             check=file_kept),
        Case("output-dir-unwritable", "adversarial path", "an unwritable output.dir: ConfigError before any data "
             "is read", unwritable, raises=ConfigError, match=r"output\.dir=.*locked/run is not writable"),
        Case("output-dir-holds-a-finished-run", "adversarial path", "a fresh run into a finished run (its last.pt "
             "deleted) is refused naming the files, which stay", finished_without_checkpoint, raises=ConfigError,
             match=r"already holds a run \(config\.yaml, metrics\.jsonl, model\.safetensors, summary\.json\).*"
                   r"output\.overwrite=true", check=run_kept),
        Case("resume-other-data-root", "adversarial path", "--resume with data.root pointing at other files: "
             "ConfigError naming both roots", other_data_root, raises=ConfigError,
             match=r"data\.root: .*/a \(1 files, 10 bytes\) in the checkpoint, .*/b \(1 files, 11 bytes\) now"),
    ]


# ---- interruptions ------------------------------------------------------------------------------------------------

def interrupted_cases():
    def keyboard_interrupt(tmp_path):
        with on_step(3, _raise_keyboard_interrupt):
            return finetune(digits(tmp_path / "run", steps=4, log_every=3))

    def sigterm(tmp_path):
        with on_step(2, lambda: os.kill(os.getpid(), signal.SIGTERM)):
            return finetune(digits(tmp_path / "run", steps=4))

    def stopped_at(step, log_lines):
        def check(summary, tmp_path):
            out = tmp_path / "run"
            assert summary["interrupted"] and summary["steps"] == step
            assert torch.load(out / "last.pt", weights_only=True)["step"] == step
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows if r["event"] == "train"] == log_lines   # no partial window logged
            assert temp_files(out) == [] and not (out / "model.safetensors").exists()
        return check

    def stale_tmp(tmp_path):
        with on_step(2, _raise_keyboard_interrupt):
            finetune(digits(tmp_path / "run", steps=3))
        write(tmp_path / "run" / ".last.pt.a1b2c3d4.tmp", b"\0" * 4096)     # a save killed with kill -9
        return finetune(digits(tmp_path / "run", steps=3), resume=True)

    def tmp_removed(summary, tmp_path):
        assert summary["steps"] == 3 and temp_files(tmp_path / "run") == []

    def full_disk(tmp_path):
        out = finished_run(tmp_path)

        def no_space(obj, f, *a, **kw):
            f.write(b"PK\x03\x04")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch, "save", no_space)
            return finetune(digits(out, steps=3), resume=True)

    def previous_kept(info, tmp_path):
        assert info.value.errno == errno.ENOSPC
        assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 2
        assert temp_files(tmp_path / "run") == []

    def second_signal_during_save(tmp_path):
        real = torch.save

        def save(obj, f, *a, **kw):
            os.kill(os.getpid(), signal.SIGINT)
            return real(obj, f, *a, **kw)

        with on_step(1, lambda: os.kill(os.getpid(), signal.SIGINT)) as mp:
            mp.setattr(torch, "save", save)
            return finetune(digits(tmp_path / "run", steps=4))

    return [
        Case("keyboard-interrupt-mid-step", "interrupted", "KeyboardInterrupt in step 3: the checkpoint of step 2 "
             "is saved, no partial log line (the window of log_every=3 goes into the checkpoint)",
             keyboard_interrupt, check=stopped_at(2, [])),
        Case("sigterm", "interrupted", "SIGTERM: the step finishes, a checkpoint is saved, the run returns "
             "interrupted", sigterm, check=stopped_at(2, [1, 2])),
        Case("stale-tmp-after-kill", "interrupted", "a temporary file of a killed save is removed on --resume",
             stale_tmp, check=tmp_removed),
        Case("full-disk-during-save", "interrupted", "ENOSPC while saving: RunOutputError naming last.pt and the "
             "cause; the previous checkpoint intact, no temporary file", full_disk, raises=RunOutputError,
             match=r"cannot write the checkpoint .*last\.pt: No space left on device", check=previous_kept),
        Case("second-ctrl-c-during-save", "interrupted", "Ctrl-C, then Ctrl-C again during the checkpoint write: "
             "the write completes, the run returns interrupted", second_signal_during_save, check=stopped_at(1, [1])),
    ]


CASES = ([wrong_type_case(t, k, kind) for t, k, kind in schema_cases()]
         + [c for t, k, kind in schema_cases() for c in out_of_range_cases(t, k, kind)]
         + [c for task in list_tasks() for c in task_cases(task)]
         + config_file_cases() + checkpoint_cases() + output_cases() + interrupted_cases())


@pytest.mark.parametrize("case", params(CASES))
def test_case(case, tmp_path):
    check_case(case, tmp_path)
