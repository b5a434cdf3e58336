"""The fine-tune engine on real data (scikit-learn digits, a Fashion-MNIST slice) with tiny ViT-iRPE models.

Every run is a few dozen steps of a one-block model, so the whole file runs in well under a minute on 2 cores."""
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

import zoo
from zoo.errors import ConfigError, DatasetNotFoundError
from zoo.finetune import build_config, finetune, load_config, run_from_cli
from zoo.finetune import engine
from zoo.finetune.engine import lr_lambda, param_groups

from domains.vision.task import ImageClassificationTask
from support.engine import on_loss_call

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# a one-block ViT-iRPE for 8x8 digits: 2x2 grid of 4x4 patches
DIGITS_MODEL = {"name": "vit_irpe_tiny", "kwargs": {"patch_size": 4, "depth": 1, "embed_dim": 64, "num_heads": 2}}
# a one-block ViT-iRPE for 28x28 Fashion-MNIST, with dropout and stochastic depth so that resume must restore RNG
FMNIST_MODEL = {"name": "vit_irpe_tiny", "kwargs": {"patch_size": 7, "depth": 1, "embed_dim": 32, "num_heads": 2,
                                                    "drop_rate": 0.1, "drop_path_rate": 0.1}}


def fmnist_cfg(out, **train):
    """512 train / 256 test images, batch 64 x accumulation 2 -> 4 steps per epoch; augmentation on."""
    t = {"steps": 6, "batch_size": 64, "accumulation": 2, "log_every": 1, "progress": False, "seed": 3,
         "num_threads": 1}
    t.update(train)
    return {"task": "image_classification", "model": FMNIST_MODEL,
            "data": {"name": "fashion_mnist", "train_limit": 512, "eval_limit": 256, "augment": True},
            "optim": {"lr": 2e-3, "warmup_steps": 2},
            "train": t, "output": {"dir": str(out)}}


def train_losses(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["event"] == "train"}


def events(out, kind):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == kind]


def no_tmp_files(d):
    return [p.name for p in Path(d).iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """Uninterrupted 6-step runs: constant lr (for resume with a new train.steps) and warmup + cosine."""
    base = tmp_path_factory.mktemp("ref")
    const = fmnist_cfg(base / "const")
    const["optim"] = {"lr": 2e-3, "warmup_steps": 0, "min_lr_ratio": 1.0}
    cos = fmnist_cfg(base / "cos")
    return {"const": (finetune(const), train_losses(base / "const")),
            "cos": (finetune(cos), train_losses(base / "cos"))}


# ---- (a) a real run -------------------------------------------------------------------------------------------

def test_digits_run_learns_and_writes_its_outputs(tmp_path):
    out = tmp_path / "run"
    cfg = {"task": "image_classification", "model": DIGITS_MODEL, "data": {"name": "digits", "augment": False},
           "optim": {"lr": 2e-3, "warmup_steps": 5},
           "train": {"steps": 60, "batch_size": 64, "log_every": 5, "eval_every": 30, "progress": False,
                     "num_threads": 1},
           "output": {"dir": str(out)}}
    summary = finetune(cfg)

    for name in ("metrics.jsonl", "summary.json", "last.pt", "model.safetensors", "config.yaml"):
        assert (out / name).is_file(), name
    assert no_tmp_files(out)
    losses = train_losses(out)
    steps = list(losses)
    assert steps == sorted(set(steps)) and steps[-1] == 60 and len(steps) >= 12
    values = list(losses.values())
    assert all(math.isfinite(v) for v in values)
    # the loss falls: chance level is ln(10) = 2.30; this model reaches ~1.0 by step 60
    assert sum(values[:3]) / 3 - sum(values[-3:]) / 3 > 0.5
    evals = events(out, "eval")
    assert [e["step"] for e in evals] == [30, 60]
    train_rows = events(out, "train")
    assert all(r["lr"] > 0 and r["samples_per_s"] > 0 and r["elapsed_s"] >= 0 for r in train_rows)
    assert train_rows[-1]["lr"] == pytest.approx(2e-3 * 0.01)          # cosine ends at min_lr_ratio * lr

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["steps"] == 60 and not summary["interrupted"]
    assert summary["final"]["accuracy"] == evals[-1]["eval_accuracy"] > 0.4
    assert summary["best"]["accuracy"] >= summary["final"]["accuracy"]
    assert summary["data"]["train_samples"] == 1438 and summary["data"]["eval_samples"] == 359
    assert summary["model_kwargs"] == {"num_classes": 10, "in_chans": 1, "img_size": 8, **DIGITS_MODEL["kwargs"]}

    # the resolved config is written back and the checkpoint records where the run stopped
    assert yaml.safe_load((out / "config.yaml").read_text())["output"]["dir"] == str(out)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (60, 2, 60 - 2 * 22)

    # the exported weights rebuild the trained model: same eval accuracy as the summary
    model = zoo.create("vit_irpe_tiny", pretrained_file=str(out / "model.safetensors"), **summary["model_kwargs"])
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    task = ImageClassificationTask()
    task.build_data(build_config(cfg))
    autocast, _ = engine._autocast(cfg["train"].get("amp", "auto"), torch.device("cpu"))   # as the run evaluated:
    with autocast():                                                 # bf16 where this CPU has it natively
        assert task.evaluate(model)["accuracy"] == summary["final"]["accuracy"]


def test_param_groups_exempt_biases_norms_and_position_tables():
    model = zoo.create("vit_irpe_tiny", img_size=8, patch_size=4, in_chans=1, num_classes=10, depth=1,
                       embed_dim=16, num_heads=2)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed == {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                       "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "head.weight"}
    assert {"pos_embed", "cls_token", "blocks.0.attn.pe.rpe_k.lookup_table_weight", "blocks.0.norm1.weight",
            "norm.bias", "head.bias"} <= exempt
    assert decayed | exempt == set(names.values())


def test_lr_schedule_warms_up_linearly_then_follows_the_cosine_to_the_floor():
    fn = lr_lambda(total_steps=12, warmup_steps=4, min_lr_ratio=0.1)
    assert [fn(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert fn(4) == 1.0 and fn(11) == pytest.approx(0.1)
    mid = 4 + (11 - 4) / 2
    assert fn(7.5) == pytest.approx(0.1 + 0.9 * 0.5) and mid == 7.5
    values = [fn(s) for s in range(4, 12)]
    assert all(a > b for a, b in zip(values, values[1:]))


# ---- (b) exact resume -----------------------------------------------------------------------------------------

@pytest.mark.debian_data("dataset-fashion-mnist")
def test_resume_with_more_steps_continues_exactly(tmp_path, reference_runs):
    ref_summary, ref = reference_runs["const"]
    out = tmp_path / "run"
    cfg = fmnist_cfg(out, steps=3)
    cfg["optim"] = {"lr": 2e-3, "warmup_steps": 0, "min_lr_ratio": 1.0}
    first = finetune(cfg)
    assert first["steps"] == 3 and not first["interrupted"]
    assert torch.load(out / "last.pt", weights_only=True)["batch_in_epoch"] == 6   # mid-epoch: 6 of 8 batches

    cfg["train"]["steps"] = 6
    second = finetune(cfg, resume=True)
    losses = train_losses(out)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]                      # every step logged once
    for step in (1, 2, 3, 4, 5, 6):                                  # 4..6 ran after the resume (epoch 1 from 4)
        assert losses[step] == pytest.approx(ref[step], rel=0, abs=1e-6), step
    assert second["steps"] == 6
    assert second["final"] == ref_summary["final"]


@pytest.mark.debian_data("dataset-fashion-mnist")
def test_resume_refuses_a_different_config_and_a_missing_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = fmnist_cfg(out, steps=1)
    finetune(cfg)
    changed = fmnist_cfg(out, steps=2)
    changed["model"] = {"name": "vit_irpe_tiny", "kwargs": {**FMNIST_MODEL["kwargs"], "depth": 2}}
    with pytest.raises(ConfigError, match=r"model\.kwargs\.depth: 1 in the checkpoint, 2 now"):
        finetune(changed, resume=True)
    with pytest.raises(ConfigError, match="already holds a run"):      # a fresh run does not clobber it
        finetune(cfg)
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        finetune(fmnist_cfg(tmp_path / "elsewhere"), resume=True)


# ---- (c) Ctrl-C -----------------------------------------------------------------------------------------------

def _interrupt_on_call(monkeypatch, call, action):
    on_loss_call(monkeypatch, call, lambda model: action())


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


@pytest.mark.debian_data("dataset-fashion-mnist")
def test_keyboard_interrupt_saves_a_checkpoint_and_resume_redoes_the_lost_step(tmp_path, monkeypatch, capsys,
                                                                                reference_runs):
    _, ref = reference_runs["cos"]
    out = tmp_path / "run"
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(fmnist_cfg(out)))
    # the second micro-batch of step 3: gradients half accumulated, dropout RNG already advanced
    _interrupt_on_call(monkeypatch, call=6, action=_raise_keyboard_interrupt)
    summary = run_from_cli(str(cfg_file), ["train.log_every=1"])
    assert summary["interrupted"] and summary["steps"] == 2
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    assert not (out / "model.safetensors").exists() and no_tmp_files(out)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    printed = capsys.readouterr().out
    assert f"zoo finetune {cfg_file} train.log_every=1 --resume" in printed
    assert sorted(train_losses(out)) == [1, 2]

    monkeypatch.undo()
    resumed = run_from_cli(str(cfg_file), ["train.log_every=1"], resume=True)
    assert not resumed["interrupted"] and resumed["steps"] == 6
    losses = train_losses(out)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert losses[step] == pytest.approx(ref[step], rel=0, abs=1e-6), step


@pytest.mark.debian_data("dataset-fashion-mnist")
def test_first_ctrl_c_finishes_the_current_step_then_stops(tmp_path, monkeypatch, reference_runs):
    _, ref = reference_runs["cos"]
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)       # default_int_handler, or SIG_IGN under nohup / background jobs
    _interrupt_on_call(monkeypatch, call=5, action=lambda: os.kill(os.getpid(), signal.SIGINT))
    summary = finetune(fmnist_cfg(out))
    assert summary["interrupted"] and summary["steps"] == 3            # step 3 completed, nothing lost
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before                    # handler restored
    monkeypatch.undo()
    finetune(fmnist_cfg(out), resume=True)
    losses = train_losses(out)
    assert [losses[s] for s in range(1, 7)] == pytest.approx([ref[s] for s in range(1, 7)], rel=0, abs=1e-6)


# ---- (d) config errors ----------------------------------------------------------------------------------------

def _write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


GOOD = "task: image_classification\nmodel:\n  name: vit_irpe_tiny\ndata:\n  name: digits\n"


def test_unknown_key_in_the_file_names_key_file_and_suggestion(tmp_path):
    p = _write(tmp_path, GOOD + "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, [])
    assert str(e.value) == f"unknown config key 'optim.lrr' in {p}; did you mean 'optim.lr'?"


def test_mistyped_override_suggests_the_valid_key(tmp_path):
    p = _write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr' in command-line override "
                                          r"'optim\.lrr=1'; did you mean 'optim\.lr'\?"):
        load_config(p, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"'train\.lr'.*did you mean 'optim\.lr'"):   # right name, wrong section
        load_config(p, ["train.lr=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(p, ["optim.lr"])


def test_wrong_value_types_name_the_key_and_the_value(tmp_path):
    p = _write(tmp_path, GOOD + "train:\n  batch_size: big\n")
    with pytest.raises(ConfigError, match=r"'train\.batch_size' in .*cfg\.yaml: 'big'"):
        load_config(p, [])
    with pytest.raises(ConfigError, match=r"'optim\.lr' in command-line override 'optim\.lr=fast': 'fast'"):
        load_config(_write(tmp_path, GOOD), ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"'optim' .* is a section"):
        load_config(_write(tmp_path, GOOD + "optim: 3\n"), [])
    with pytest.raises(ConfigError, match=r"'train\.amp': 'fp8'"):
        load_config(_write(tmp_path, GOOD), ["train.amp=fp8"])
    # YAML reads a bare `off` as a boolean: it still means "off", in the file and on the command line
    assert load_config(_write(tmp_path, GOOD + "train:\n  amp: off\n"), []).train.amp == "off"
    assert load_config(_write(tmp_path, GOOD), ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match=r"'model\.name' is required"):
        load_config(_write(tmp_path, "task: image_classification\ndata:\n  name: digits\n"), [])


def test_missing_file_and_free_form_model_kwargs(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"config file not found: {missing}"):
        load_config(missing, [])
    with pytest.raises(ConfigError, match="cannot parse config file .*found duplicate key"):
        load_config(_write(tmp_path, GOOD + "model:\n  kwargs: {}\n"), [])
    cfg = load_config(_write(tmp_path, GOOD.replace("tiny\n", "tiny\n  kwargs:\n    anything_goes: 1\n")),
                      ["model.kwargs.depth=2", "optim.lr=5e-4", "train.steps=7"])
    assert dict(cfg.model.kwargs) == {"anything_goes": 1, "depth": 2}
    assert cfg.optim.lr == 5e-4 and cfg.train.steps == 7 and cfg.output.dir == "runs/vit_irpe_tiny"
    with pytest.raises(ConfigError, match="available tasks: causal_lm, dna_lm, entity_linking, image_classification, masked_lm, sequence_classification, word_labelling"):
        finetune(build_config({"task": "segmentation", "model": {"name": "x"}, "data": {"name": "digits"}}))


# ---- (e) dataset not installed --------------------------------------------------------------------------------

@pytest.mark.debian_data("dataset-fashion-mnist")
def test_missing_dataset_says_how_to_install_it(tmp_path, monkeypatch):
    import domains.vision.data as vision_data
    monkeypatch.setattr(vision_data, "FASHION_MNIST_SYSTEM_DIRS", [])
    monkeypatch.delenv("ZOO_DATA", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = fmnist_cfg(tmp_path / "run")
    cfg["data"]["root"] = str(empty)
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        finetune(cfg)
    assert str(empty) in str(e.value)
    assert not (tmp_path / "run" / "last.pt").exists()


# ---- (f) no half-written files --------------------------------------------------------------------------------

@pytest.mark.debian_data("dataset-fashion-mnist")
def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save
    saves = {"n": 0}

    def flaky_save(obj, f, *a, **kw):
        saves["n"] += 1
        if saves["n"] == 2:                                          # the save at step 4: half a file, then fail
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="No space left"):
        finetune(fmnist_cfg(out, steps=6, save_every=2))
    assert no_tmp_files(out)
    ckpt = torch.load(out / "last.pt", weights_only=True)              # the step-2 checkpoint, intact
    assert ckpt["step"] == 2

    before = (out / "last.pt").read_bytes()

    def failing_save(obj, f, *a, **kw):
        f.write(b"garbage")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="Input/output error"):
        engine.save_checkpoint(out / "last.pt", {"format": "x"})
    assert (out / "last.pt").read_bytes() == before and no_tmp_files(out)

    monkeypatch.undo()                                               # the kept checkpoint resumes
    assert finetune(fmnist_cfg(out, steps=6, save_every=2), resume=True)["steps"] == 6
    assert sorted(train_losses(out)) == [1, 2, 3, 4, 5, 6]
