"""``train.amp=fp16``: float16 autocast with a dynamic loss scale (``torch.amp.GradScaler``).

Every run is a few steps of a one-block ViT on scikit-learn's digits, on the CPU (torch autocasts to float16 there,
emulated: slow for big models, fine for these). What only a CUDA device shows -- the speed of fp16 tensor cores and
a real fp16 overflow of a large model -- is not tested here; the loss-scale logic is the same code on both.
A forced overflow is a huge initial scale: the scaled float16 gradients overflow, GradScaler skips the step and
halves the scale, until it fits."""
import os
import signal
import warnings

import pytest
import torch
from safetensors.torch import load_file

from zoo.errors import ConfigError
from zoo.finetune import build_config, finetune
from zoo.finetune import engine, scaling
from zoo.finetune.engine import TrainingDivergedError

from finetune.test_run_safety import TIMING, digits_cfg, metric_rows, nan_loss
from support.engine import on_loss_call

pytestmark = pytest.mark.filterwarnings("ignore:train.amp=fp16 on a cpu")
CPU = torch.device("cpu")


def train_rows(out):
    return [r for r in metric_rows(out) if r["event"] == "train"]


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# ---- autocast and config ------------------------------------------------------------------------------------------

def test_fp16_autocasts_matmuls_to_float16_and_warns_where_the_cpu_emulates_it(monkeypatch):
    monkeypatch.setattr(engine, "_cpu_flags", lambda: {"avx2", "avx512_bf16"})
    with pytest.warns(UserWarning, match=r"amp=fp16 on a cpu without native fp16.*amp=auto"):
        ctx, used = engine._autocast("fp16", CPU)
    assert used == "fp16"
    with ctx():
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.float16
    monkeypatch.setattr(engine, "_cpu_flags", lambda: {"avx512_fp16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine._autocast("fp16", CPU)


def test_amp_modes_are_checked_and_auto_keeps_its_meaning(monkeypatch):
    with pytest.raises(ConfigError, match=r"'train\.amp'.*fp8.*auto, off, bf16, fp16"):
        build_config(digits_cfg("unused", amp="fp8"))
    monkeypatch.setattr(engine, "_cpu_flags", lambda: {"avx2"})
    assert engine._autocast("auto", CPU)[1] is None              # never fp16: auto is bf16-where-native or off


# ---- training -----------------------------------------------------------------------------------------------------

def test_fp16_losses_follow_float32_and_report_the_scale(tmp_path):
    finetune(digits_cfg(tmp_path / "fp32", steps=6, amp="off"))
    summary = finetune(digits_cfg(tmp_path / "fp16", steps=6, amp="fp16"))
    ref, got = train_rows(tmp_path / "fp32"), train_rows(tmp_path / "fp16")
    # float16 keeps 11 significant bits: over 6 steps the mean loss stays within 1e-3 relative of float32's
    # (measured: 2e-5)
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=1e-3)
    assert [r["lr"] for r in got] == [r["lr"] for r in ref]
    # the default scale 2^16 fits these gradients: nothing skipped, the scale unchanged (it grows after 2000 steps)
    assert [(r["loss_scale"], r["skipped_steps"]) for r in got] == [(65536.0, 0)] * 6
    assert "loss_scale" not in ref[0] and summary["amp"] == "fp16" and summary["skipped_steps"] == 0
    ckpt = torch.load(tmp_path / "fp16" / "last.pt", weights_only=True)
    assert ckpt["loss_scaling"]["scaler"]["scale"] == 65536.0
    assert torch.load(tmp_path / "fp32" / "last.pt", weights_only=True)["loss_scaling"] is None


def test_an_overflowing_scale_skips_steps_and_backs_off_while_the_schedule_advances(tmp_path, monkeypatch):
    init = 2.0 ** 24                          # the scaled fp16 gradients overflow until the scale is down to 2^17
    monkeypatch.setattr(scaling, "INIT_SCALE", init)
    start = {}
    on_loss_call(monkeypatch, call=1, action=lambda m: start.update(
        {k: v.clone() for k, v in m.state_dict().items()}))
    finetune(digits_cfg(tmp_path / "skipped", steps=3, amp="fp16"))
    rows = train_rows(tmp_path / "skipped")
    assert [(r["skipped_steps"], r["loss_scale"], r["grad_norm"]) for r in rows] == [
        (1, init / 2, None), (2, init / 4, None), (3, init / 8, None)]
    # three skipped steps: the optimizer never stepped and the weights are those the run started from
    ckpt = torch.load(tmp_path / "skipped" / "last.pt", weights_only=True)
    assert ckpt["optimizer"]["state"] == {}
    weights = load_file(str(tmp_path / "skipped" / "model.safetensors"))
    assert weights.keys() == start.keys() and all(torch.equal(weights[k], start[k]) for k in start)

    monkeypatch.undo()
    monkeypatch.setattr(scaling, "INIT_SCALE", init)
    summary = finetune(digits_cfg(tmp_path / "fp16", steps=10, amp="fp16"))
    finetune(digits_cfg(tmp_path / "fp32", steps=10, amp="off"))
    rows, ref = train_rows(tmp_path / "fp16"), train_rows(tmp_path / "fp32")
    skipped = [r["skipped_steps"] for r in rows]
    # GradScaler: each skipped step halves the scale, a good one leaves it (growth only after 2000 good steps)
    assert all(r["loss_scale"] == init * 0.5 ** r["skipped_steps"] for r in rows)
    assert skipped[0] == 1 and all(b - a in (0, 1) for a, b in zip(skipped, skipped[1:]))
    assert 1 <= skipped[-1] < 10 and summary["skipped_steps"] == skipped[-1]
    # a skipped step is a step: the lr of step s is the schedule's at s, as in a run without skips
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref]
    assert all(r["grad_norm"] is None for r, a, b in zip(rows, [0] + skipped, skipped) if b > a)


def test_interrupted_and_resumed_fp16_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setattr(scaling, "INIT_SCALE", 2.0 ** 24)      # skips before and after the interruption
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    finetune(digits_cfg(ref_out, steps=10, amp="fp16", eval_every=5))
    on_loss_call(monkeypatch, call=4, action=lambda m: os.kill(os.getpid(), signal.SIGINT))
    assert finetune(digits_cfg(out, steps=10, amp="fp16", eval_every=5))["steps"] == 4
    state = torch.load(out / "last.pt", weights_only=True)["loss_scaling"]
    assert state["scaler"]["scale"] == 2.0 ** 20 and state["skipped"] == 4      # restored below, or the log differs
    monkeypatch.undo()
    monkeypatch.setattr(scaling, "INIT_SCALE", 2.0 ** 24)
    finetune(digits_cfg(out, steps=10, amp="fp16", eval_every=5), resume=True)
    assert strip(metric_rows(out)) == strip(metric_rows(ref_out))
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (ref_out, out))
    assert a["loss_scaling"] == b["loss_scaling"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# ---- what is still a divergence --------------------------------------------------------------------------------------

def test_a_nan_loss_under_fp16_is_a_divergence(tmp_path, monkeypatch):
    on_loss_call(monkeypatch, call=3, action=nan_loss)
    with pytest.raises(TrainingDivergedError, match=r"not finite.*step 3.*float16.*amp=bf16 or off"):
        finetune(digits_cfg(tmp_path / "run", amp="fp16"))


def test_gradients_that_overflow_at_every_scale_are_a_divergence(tmp_path, monkeypatch):
    def inf_grads(model):                       # from step 1 on, every gradient of the head is inf: every step skipped
        model.head.weight.register_hook(lambda g: g * float("inf"))

    on_loss_call(monkeypatch, call=1, action=inf_grads)
    limit = scaling.MAX_SKIPPED_IN_A_ROW
    with pytest.raises(TrainingDivergedError, match=rf"gradients were not finite at {limit} steps in a row up to "
                                                    rf"step {limit}.*fp16 loss scale"):
        finetune(digits_cfg(tmp_path / "run", steps=limit + 5, amp="fp16", log_every=5, save_every=10))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)     # the last save (epoch end) before
    assert ckpt["step"] == 24 and ckpt["loss_scaling"]["in_a_row"] == 24     # the check at step 25's log failed


def test_the_scaler_state_of_a_disabled_scaling_is_none_and_loading_none_keeps_a_fresh_one():
    off = scaling.LossScaling(CPU, enabled=False)
    assert off.state_dict() is None and off.log_fields() == {} and off.stuck_step() is None
    on = scaling.LossScaling(CPU, enabled=True)
    on.load_state_dict(None)                    # a checkpoint of a bf16 run resumed with fp16: a fresh scale
    assert on.state_dict() == {"scaler": torch.amp.GradScaler("cpu").state_dict(), "skipped": 0, "in_a_row": 0}


def test_fp16_with_ema_and_prefetch_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(scaling, "INIT_SCALE", 2.0 ** 20)     # a few skipped steps on the way
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    ref = finetune(digits_cfg(ref_out, steps=8, amp="fp16", ema_decay=0.9, eval_every=3))
    on_loss_call(monkeypatch, call=5, action=lambda m: os.kill(os.getpid(), signal.SIGINT))
    finetune(digits_cfg(out, steps=8, amp="fp16", ema_decay=0.9, eval_every=3, prefetch=2))
    monkeypatch.undo()
    monkeypatch.setattr(scaling, "INIT_SCALE", 2.0 ** 20)
    got = finetune(digits_cfg(out, steps=8, amp="fp16", ema_decay=0.9, eval_every=3, prefetch=2), resume=True)
    assert strip(metric_rows(out)) == strip(metric_rows(ref_out))
    assert 0 < ref["skipped_steps"] == got["skipped_steps"] and got["final_raw"] == ref["final_raw"]
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (ref_out, out))
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
