"""What the fine-tune engine does when a run meets trouble: an output folder that already holds a run, a loss that
turns NaN between log lines, signals during a checkpoint save, a full disk, a data root that changed before
``--resume``, an interruption in the middle of a logging window.

Every run is a few steps of a one-block ViT on scikit-learn's digits (Fashion-MNIST files where the data root
matters), so the file runs in well under a minute on 2 cores."""
import errno
import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import yaml

from zoo.errors import ConfigError, ZooError
from zoo.finetune import build_config, finetune
from zoo.finetune import engine, runstate
from zoo.finetune.engine import TrainingDivergedError

from support.engine import on_loss_call

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_MODEL = {"name": "vit_irpe_tiny", "kwargs": {"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}}
OUTPUTS = ("config.yaml", "metrics.jsonl", "last.pt", "model.safetensors", "summary.json")
TIMING = ("elapsed_s", "samples_per_s", "eval_time_s")


def digits_cfg(out, **train):
    """256 train / 64 eval digits, batch 32 -> 8 steps per epoch."""
    t = {"steps": 4, "batch_size": 32, "log_every": 1, "progress": False, "seed": 1, "num_threads": 1}
    t.update(train)
    return {"task": "image_classification", "model": DIGITS_MODEL,
            "data": {"name": "digits", "augment": False, "train_limit": 256, "eval_limit": 64},
            "optim": {"lr": 2e-3}, "train": t, "output": {"dir": str(out)}}


def temp_files(d):
    return sorted(p.name for p in Path(d).iterdir() if p.name.endswith(".tmp"))


def metric_rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def nan_loss(model):
    return lambda res: (res[0] * float("nan"), res[1])


# ---- 1. a finished run is not replaced without asking -----------------------------------------------------------

def test_a_fresh_run_does_not_replace_a_finished_run_whose_checkpoint_was_deleted(tmp_path):
    out = tmp_path / "run"
    finetune(digits_cfg(out, steps=2))
    (out / "last.pt").unlink()                       # the user keeps the weights, drops the checkpoint
    before = {name: (out / name).read_bytes() for name in OUTPUTS if (out / name).exists()}
    assert set(before) == {"config.yaml", "metrics.jsonl", "model.safetensors", "summary.json"}
    with pytest.raises(ConfigError) as e:
        finetune(digits_cfg(out, steps=2))
    msg = str(e.value)
    assert str(out) in msg and "output.overwrite=true" in msg
    assert all(name in msg for name in before), msg
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not (out / "last.pt").exists()
    cfg = digits_cfg(out, steps=2)
    cfg["output"]["overwrite"] = True                 # asked: replaced
    assert finetune(cfg)["steps"] == 2 and (out / "last.pt").is_file()


# ---- 2. divergence between log lines -----------------------------------------------------------------------------

def test_a_nan_loss_between_log_lines_is_caught_before_the_next_save(tmp_path, monkeypatch):
    out = tmp_path / "run"
    on_loss_call(monkeypatch, call=3, action=nan_loss)          # step 3 of 4; logs every 10, saves every step
    with pytest.raises(TrainingDivergedError) as e:
        finetune(digits_cfg(out, log_every=10, save_every=1))
    msg = str(e.value)
    assert "step 3" in msg and f"{out / 'last.pt'} (step 2)" in msg, msg
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (out / "model.safetensors").exists() and temp_files(out) == []


def test_non_finite_weights_behind_a_finite_loss_are_never_saved(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def inf_grads(model):                  # the loss of step 2 is finite, its gradients are not: NaN weights
        model.head.weight.register_hook(lambda g: g * float("inf"))

    on_loss_call(monkeypatch, call=2, action=inf_grads)
    with pytest.raises(TrainingDivergedError, match=r"step 2"):
        finetune(digits_cfg(out, log_every=10, save_every=1))
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_divergence_before_the_first_save_does_not_name_a_checkpoint_that_does_not_exist(tmp_path, monkeypatch):
    out = tmp_path / "run"
    on_loss_call(monkeypatch, call=1, action=nan_loss)
    with pytest.raises(TrainingDivergedError) as e:
        finetune(digits_cfg(out, log_every=10))
    msg = str(e.value)
    assert not (out / "last.pt").exists()
    assert "last good checkpoint" not in msg and "no checkpoint was written" in msg.lower(), msg


# ---- 3. signals, stale temporary files, file modes -----------------------------------------------------------------

def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path, monkeypatch):
    out = tmp_path / "run"

    class Killed(Exception):
        pass

    def die(signum, frame):                     # what SIGTERM would do without the engine's handler
        raise Killed
    previous = signal.signal(signal.SIGTERM, die)
    try:
        on_loss_call(monkeypatch, call=2, action=lambda m: os.kill(os.getpid(), signal.SIGTERM))
        summary = finetune(digits_cfg(out))
        assert signal.getsignal(signal.SIGTERM) is die                   # the caller's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert summary["interrupted"] and summary["steps"] == 2
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2


def test_a_second_ctrl_c_during_the_checkpoint_save_waits_for_the_save(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save

    def save_interrupted(obj, f, *a, **kw):     # Ctrl-C again while the checkpoint is being written
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(obj, f, *a, **kw)

    real_write_text = engine.atomic_write_text

    def write_text_interrupted(path, text):    # and again while the summary is being written
        if Path(path).name == "summary.json":
            os.kill(os.getpid(), signal.SIGINT)
        return real_write_text(path, text)

    on_loss_call(monkeypatch, call=2, action=lambda m: os.kill(os.getpid(), signal.SIGINT))
    monkeypatch.setattr(torch, "save", save_interrupted)
    monkeypatch.setattr(engine, "atomic_write_text", write_text_interrupted)
    summary = finetune(digits_cfg(out))
    assert summary["interrupted"] and summary["steps"] == 2
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    assert temp_files(out) == []


def test_stale_temporary_files_of_a_killed_save_are_removed_on_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    on_loss_call(monkeypatch, call=2, action=lambda m: os.kill(os.getpid(), signal.SIGINT))
    finetune(digits_cfg(out))
    monkeypatch.undo()
    # what kill -9 during a save leaves: the engine's and the weight writer's temporary names
    stale = [".last.pt.k3j_x9a2.tmp", ".model.safetensors.4242.0123abcd.tmp", ".summary.json.zz01ab_c.tmp"]
    for name in stale:
        (out / name).write_bytes(b"\0" * 1000)
    (out / "notes.tmp").write_text("mine")      # not a name the engine makes: kept
    assert finetune(digits_cfg(out), resume=True)["steps"] == 4
    assert temp_files(out) == ["notes.tmp"]


def test_run_outputs_get_the_permissions_of_a_plainly_created_file(tmp_path):
    out = tmp_path / "run"
    finetune(digits_cfg(out, steps=1))
    mask = os.umask(0)
    os.umask(mask)
    modes = {name: (out / name).stat().st_mode & 0o777 for name in OUTPUTS}
    assert modes == {name: 0o666 & ~mask for name in OUTPUTS}


# ---- 4. numeric config values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("override", ["optim.lr=nan", "optim.lr=inf", "optim.eps=-1", "optim.eps=nan",
                                      "optim.eps=0", "optim.weight_decay=nan", "optim.weight_decay=inf",
                                      "optim.clip_grad=nan", "optim.clip_grad=inf", "optim.betas=[nan,0.9]",
                                      "train.label_smoothing=nan", "optim.warmup_ratio=inf",
                                      "data.mask_prob=nan", "data.mask_prob=1.5"])
def test_numeric_config_values_must_be_finite_and_in_range(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        build_config(digits_cfg("unused"), [override])


# ---- 5. unusable output folders and a full disk --------------------------------------------------------------------

def test_output_dir_that_is_a_file_or_below_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "results"
    f.write_text("not a folder")
    with pytest.raises(ConfigError, match=rf"output\.dir.*{f}.*not a (folder|directory)"):
        finetune(digits_cfg(f, steps=1))
    with pytest.raises(ZooError, match=rf"{f / 'run'}.*[Nn]ot a directory"):
        finetune(digits_cfg(f / "run", steps=1))
    assert f.read_text() == "not a folder"


def test_unwritable_output_dir_is_a_clear_error(tmp_path, monkeypatch):
    out = tmp_path / "locked"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out else real_access(p, mode, **kw))
    with pytest.raises(ConfigError, match=rf"output\.dir.*{out}.*not writable"):
        finetune(digits_cfg(out, steps=1))
    assert list(out.iterdir()) == []


def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    finetune(digits_cfg(out, steps=2))
    good = (out / "last.pt").read_bytes()
    real_open = open

    class FullDisk:                             # the disk fills up after the first 4 KiB of the checkpoint
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_disk_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return FullDisk(f) if "w" in mode and Path(path).name.startswith(".last.pt.") else f

    monkeypatch.setattr(runstate, "open", full_disk_open, raising=False)
    with pytest.raises(ZooError) as e:
        finetune(digits_cfg(out, steps=4), resume=True)
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert str(out / "last.pt") in str(e.value) and "No space left on device" in str(e.value)
    assert (out / "last.pt").read_bytes() == good and temp_files(out) == []
    monkeypatch.undo()
    assert finetune(digits_cfg(out, steps=4), resume=True)["steps"] == 4


# ---- 6. the data behind --resume --------------------------------------------------------------------------------

def _fmnist_root(d, train_prefix="train"):
    d.mkdir()
    for kind in ("images-idx3", "labels-idx1"):
        (d / f"train-{kind}-ubyte.gz").symlink_to(FMNIST_DIR / f"{train_prefix}-{kind}-ubyte.gz")
        (d / f"t10k-{kind}-ubyte.gz").symlink_to(FMNIST_DIR / f"t10k-{kind}-ubyte.gz")
    return d


@pytest.mark.debian_data("dataset-fashion-mnist")
def test_resume_refuses_a_data_root_holding_other_data(tmp_path):
    out = tmp_path / "run"
    a = _fmnist_root(tmp_path / "a")
    b = _fmnist_root(tmp_path / "b", train_prefix="t10k")       # other files: the test split posing as train
    moved = _fmnist_root(tmp_path / "moved")                    # the same files in another folder
    cfg = {"task": "image_classification",
           "model": {"name": "vit_irpe_tiny", "kwargs": {"patch_size": 7, "depth": 1, "embed_dim": 16, "num_heads": 2}},
           "data": {"name": "fashion_mnist", "root": str(a), "train_limit": 128, "eval_limit": 32, "augment": False},
           "train": {"steps": 1, "batch_size": 32, "progress": False, "num_threads": 1},
           "output": {"dir": str(out)}}
    finetune(cfg)
    cfg["train"]["steps"] = 2
    cfg["data"]["root"] = str(b)
    with pytest.raises(ConfigError) as e:
        finetune(cfg, resume=True)
    assert str(a) in str(e.value) and str(b) in str(e.value) and "data.root" in str(e.value)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 1
    cfg["data"]["root"] = str(moved)
    assert finetune(cfg, resume=True)["steps"] == 2


# ---- 7. the logging window across an interruption ------------------------------------------------------------------

def test_interrupted_and_resumed_log_equals_the_uninterrupted_log(tmp_path, monkeypatch):
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    finetune(digits_cfg(ref_out, steps=8, log_every=3, eval_every=4))
    on_loss_call(monkeypatch, call=5, action=lambda m: os.kill(os.getpid(), signal.SIGINT))   # stops after step 5
    assert finetune(digits_cfg(out, steps=8, log_every=3, eval_every=4))["steps"] == 5
    monkeypatch.undo()
    finetune(digits_cfg(out, steps=8, log_every=3, eval_every=4), resume=True)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    ref, got = strip(metric_rows(ref_out)), strip(metric_rows(out))
    assert [(r["event"], r["step"]) for r in got] == [(r["event"], r["step"]) for r in ref]
    for a, b in zip(got, ref):
        assert a.keys() == b.keys()
        for k in a:
            expected = pytest.approx(b[k], rel=1e-9, abs=1e-12) if isinstance(b[k], float) else b[k]
            assert a[k] == expected, (a["step"], k)


# ---- the command line --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, names", [
    ("output.dir={file}", r"output\.dir={file} is an existing file"),
    ("model.kwargs.depth=deep", r"model\.kwargs.*depth"),
    ("optim.lr=nan", r"'optim\.lr': nan"),
])
def test_the_command_line_prints_errors_without_a_traceback(tmp_path, capsys, override, names):
    from zoo.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(digits_cfg(tmp_path / "run", steps=1)))
    assert main(["finetune", str(cfg_file), override.format(file=f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: ") and "Traceback" not in err
    assert re.search(names.format(file=re.escape(str(f))), err), err
