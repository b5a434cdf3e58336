"""Each task owns its data schema: ``task`` is required, a task's data keys are its own (another task's key is
refused naming that task), defaults come from the task's schema, and a run saved when one ``data`` section held every
task's keys (the unused ones null) still loads and resumes."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml

from zoo.errors import ConfigError
from zoo.finetune import DataCfg, build_config, finetune, list_tasks, load_config, valid_keys
from zoo.finetune.config import data_schema

DIGITS_MODEL = {"name": "vit_irpe_tiny", "kwargs": {"patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2}}

# the data section of every config a run saved before the data schemas were per task: all tasks' keys, unused = null
OLD_FORM_DATA = {
    "name": None, "root": None, "download": False, "train_limit": None, "eval_limit": None, "augment": True,
    "eval_split": "test", "seq_len": None, "vocab_size": None, "tokenizer": None, "tokenizer_files": None,
    "languages": None, "cache": True, "tokenizer_kind": None, "k": None, "label_rank": None, "top_n": None,
    "mask_prob": None, "manuals": None, "min_freq": None, "dangling_links": None}


def digits(out, steps):
    return {"task": "image_classification", "model": json.loads(json.dumps(DIGITS_MODEL)),
            "data": {"name": "digits", "augment": False, "train_limit": 128, "eval_limit": 32},
            "optim": {"lr": 2e-3, "warmup_steps": 0, "min_lr_ratio": 1.0},     # constant: a run can be extended
            "train": {"steps": steps, "batch_size": 32, "log_every": 1, "progress": False, "num_threads": 1,
                      "seed": 2},
            "output": {"dir": str(out)}}


def train_losses(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["event"] == "train"}


def test_the_task_is_required_and_an_unknown_one_names_the_closest():
    base = {"model": {"name": "vit_irpe_tiny"}, "data": {"name": "digits"}}
    with pytest.raises(ConfigError, match=r"config key 'task' is required.*pass task=\.\.\.; available tasks: "
                                          + ", ".join(list_tasks())):
        build_config(base)
    with pytest.raises(ConfigError, match=r"unknown task 'image_clasification' \(config key 'task' in command-line "
                                          r"override 'task=image_clasification'\); did you mean "
                                          r"'image_classification'\?"):
        build_config(base, ["task=image_clasification"])
    assert build_config(base, ["task=image_classification"]).task == "image_classification"


def test_every_task_schema_extends_the_shared_keys_and_checks_them():
    shared = {f.name for f in fields(DataCfg)}
    for task in list_tasks():
        schema = data_schema(task)
        assert issubclass(schema, DataCfg) and shared <= {f.name for f in fields(schema)}, task
        assert {k for k in valid_keys(task) if not k.startswith("data.")} == \
            {k for k in valid_keys() if not k.startswith("data.")}
        cfg = {"task": task, "model": {"name": "m"}, "data": {"name": "d", "train_limit": 0}}
        with pytest.raises(ConfigError, match=r"'data\.train_limit': 0 \(must be >= 1\)"):
            build_config(cfg)


def test_a_data_key_of_another_task_names_the_tasks_that_use_it():
    users = sorted(t for t in list_tasks() if "mask_prob" in {f.name for f in fields(data_schema(t))})
    assert users and "image_classification" not in users
    with pytest.raises(ConfigError, match=rf"unknown config key 'data\.mask_prob' in command-line override "
                                          rf"'data\.mask_prob=0\.2' \(task 'image_classification' has no data key "
                                          rf"'mask_prob'; it is a data key of tasks? {', '.join(users)}\)$"):
        build_config(digits("x", 1), ["data.mask_prob=0.2"])
    # a typo of one of the task's own keys still gets the closest of them
    with pytest.raises(ConfigError, match=r"'data\.augmnt'.*did you mean 'data\.augment'\?"):
        build_config(digits("x", 1), ["data.augmnt=false"])


def test_defaults_come_from_the_tasks_schema():
    base = {"model": {"name": "m"}, "data": {"name": "d"}}
    # BERT (Devlin et al., 2019, sec. 3.1) masks 15% of the tokens
    assert build_config({**base, "task": "masked_lm"}).data.mask_prob == 0.15
    # an image task has no sequence keys at all
    assert "seq_len" not in build_config({**base, "task": "image_classification"}).data


def test_a_config_yaml_in_the_old_form_loads_with_the_tasks_defaults(tmp_path):
    old = {"task": "masked_lm", "model": {"name": "dna_bipe_tiny"},
           "data": {**OLD_FORM_DATA, "name": "16s_rrna", "eval_split": "val"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    now = load_config(path)
    new = build_config({"task": "masked_lm", "model": {"name": "dna_bipe_tiny"},
                        "data": {"name": "16s_rrna", "eval_split": "val"}})
    assert dict(now.data) == dict(new.data)
    # a key the task never read, set to something other than its old default, is still named
    path.write_text(yaml.safe_dump({**old, "data": {**old["data"], "manuals": ["R-intro"]}}))
    with pytest.raises(ConfigError, match=r"'data\.manuals'.*task 'masked_lm' has no data key 'manuals'"):
        load_config(path)


def test_a_run_saved_in_the_old_form_resumes_exactly(tmp_path):
    whole = tmp_path / "whole"
    finetune(digits(whole, 3))
    out = tmp_path / "run"
    finetune(digits(out, 2))
    # rewrite the saved config (config.yaml and the checkpoint's) in the old form
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["config"]["data"] = {**OLD_FORM_DATA, **ckpt["config"]["data"]}
    assert set(ckpt["config"]["data"]) == set(OLD_FORM_DATA)
    torch.save(ckpt, out / "last.pt")
    (out / "config.yaml").write_text(yaml.safe_dump(ckpt["config"]))

    summary = finetune(load_config(out / "config.yaml", ["train.steps=3"]), resume=True)
    assert summary["steps"] == 3
    assert train_losses(out) == pytest.approx(train_losses(whole), rel=0, abs=1e-6)   # as if never stopped
    # the old form is no licence to change what the run depends on
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["config"]["data"] = {**OLD_FORM_DATA, **ckpt["config"]["data"], "train_limit": 64}
    torch.save(ckpt, out / "last.pt")
    with pytest.raises(ConfigError, match=r"data\.train_limit: 64 in the checkpoint, 128 now"):
        finetune(digits(out, 4), resume=True)
