"""``train.ema_decay``: an exponential moving average of the weights, evaluated beside them.

The decay and the update are checked against timm's own ``ModelEmaV3`` (the reference the engine follows) and
against the formula; the engine runs are a few steps of a one-block ViT on scikit-learn's digits, in float32."""
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from timm.utils.model_ema import ModelEmaV3
from torch import nn

import zoo
from zoo.errors import ConfigError
from zoo.finetune import build_config, finetune
from zoo.finetune.ema import WeightEma, ema_decay

from domains.vision.task import ImageClassificationTask
from finetune.test_run_safety import DIGITS_MODEL, TIMING, digits_cfg, metric_rows
from support.engine import on_loss_call


def ema_cfg(out, **train):
    return digits_cfg(out, **{"amp": "off", "ema_decay": 0.9, **train})


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# ---- the decay and the update against timm ------------------------------------------------------------------------

@pytest.mark.parametrize("warmup", [True, False])
def test_decay_is_timm_model_ema_v3s(warmup):
    ref = ModelEmaV3(nn.Linear(2, 2), decay=0.9998, use_warmup=warmup)
    steps = list(range(1, 50)) + [100, 1000, 10_000, 100_000, 10 ** 6]
    assert [ema_decay(s, 0.9998, warmup) for s in steps] == [ref.get_decay(s) for s in steps]
    # the values this promises: a copy first, then 1 - (1 + t)^(-2/3) with t = step - 1, capped at the decay
    assert ema_decay(1, 0.9998) == 0.0
    assert ema_decay(2, 0.9998) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema_decay(10 ** 6, 0.9998) == 0.9998 and ema_decay(2, 0.9998, warmup=False) == 0.9998


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


@pytest.mark.parametrize("warmup", [True, False])
def test_update_equals_timm_model_ema_v3_and_the_formula(warmup):
    torch.manual_seed(0)
    model = Toy()
    ours = WeightEma(model, decay=0.8, warmup=warmup)
    timm_ema = ModelEmaV3(model, decay=0.8, use_warmup=warmup, exclude_buffers=True)    # buffers copied
    by_hand = {k: v.clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(1, 8):
        model.train()
        loss = model(torch.randn(16, 6)).square().mean()          # moves the weights and the BatchNorm statistics
        opt.zero_grad()
        loss.backward()
        opt.step()
        d = ours.update(model, step)
        timm_ema.update(model, step=step)
        for k, w in model.named_parameters():
            by_hand[k] = d * by_hand[k] + (1 - d) * w.detach()
    got, ref = ours.state_dict(), timm_ema.module.state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    for k, v in by_hand.items():
        torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-7)
    for k in ("fc1.weight", "bn.weight", "fc2.weight", "fc2.bias"):    # (fc1.bias gets no gradient before the BN)
        assert not torch.equal(got[k], model.state_dict()[k])        # an average, not the weights
    for k in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert torch.equal(got[k], model.state_dict()[k])            # buffers copied
    assert not ours.module.training and not any(p.requires_grad for p in ours.module.parameters())


def test_low_precision_weights_are_averaged_in_float32_and_exported_in_their_dtype():
    model = nn.Linear(4, 4).to(torch.bfloat16)
    ema = WeightEma(model, decay=0.999)
    assert ema.module.weight.dtype == torch.float32
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 1)
    ema.update(model, 2)
    assert ema.weights_like(model)["weight"].dtype == torch.bfloat16
    torch.testing.assert_close(ema.module.weight, model.weight.float())


# ---- the engine -----------------------------------------------------------------------------------------------------

def test_a_run_evaluates_both_and_the_ema_defines_best_final_and_the_weights(tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = []                                   # the weights before micro-batch c = after step c - 1
    real = ImageClassificationTask.loss

    def record(self, model, batch):
        seen.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return real(self, model, batch)

    monkeypatch.setattr(ImageClassificationTask, "loss", record)
    summary = finetune(ema_cfg(out, steps=8, eval_every=4))
    evals = [r for r in metric_rows(out) if r["event"] == "eval"]
    assert [e["step"] for e in evals] == [4, 8]
    assert all({"eval_accuracy", "eval_loss", "eval_raw_accuracy", "eval_raw_loss"} <= e.keys() for e in evals)
    last = evals[-1]
    assert summary["final"] == {"accuracy": last["eval_accuracy"], "loss": last["eval_loss"]}
    assert summary["final_raw"] == {"accuracy": last["eval_raw_accuracy"], "loss": last["eval_raw_loss"]}
    assert summary["best"]["accuracy"] == max(e["eval_accuracy"] for e in evals) and summary["ema_decay"] == 0.9
    assert last["eval_loss"] != last["eval_raw_loss"]

    # the EMA in the checkpoint is the formula over the raw weights after each step
    ckpt = torch.load(out / "last.pt", weights_only=True)
    after = seen[1:] + [{k: ckpt["model"][k] for k in seen[0]}]             # after steps 1..8
    ema = {k: v.clone() for k, v in after[0].items()}                       # step 1: decay 0, a copy
    for step in range(2, 9):
        d = ema_decay(step, 0.9)
        ema = {k: d * ema[k] + (1 - d) * after[step - 1][k] for k in ema}
    for k, v in ema.items():
        torch.testing.assert_close(ckpt["ema"][k], v, rtol=1e-6, atol=1e-7)

    # model.safetensors holds the EMA weights, and they score the summary's final metrics
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(weights[k], ckpt["ema"][k]) for k in ckpt["ema"])
    assert any(not torch.equal(weights[k], ckpt["model"][k]) for k in seen[0])
    model = zoo.create(DIGITS_MODEL["name"], pretrained_file=str(out / "model.safetensors"), **summary["model_kwargs"])
    task = ImageClassificationTask()
    task.build_data(build_config(ema_cfg(out)))
    assert task.evaluate(model)["accuracy"] == summary["final"]["accuracy"]


def test_without_ema_nothing_changes(tmp_path):
    summary = finetune(digits_cfg(tmp_path / "run", steps=2, amp="off"))
    assert summary["ema_decay"] is None and "final_raw" not in summary
    assert not any(k.startswith("eval_raw_") for r in metric_rows(tmp_path / "run") for k in r)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["ema"] is None


def test_interrupted_and_resumed_ema_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    ref = finetune(ema_cfg(ref_out, steps=8, eval_every=3))
    on_loss_call(monkeypatch, call=5, action=lambda m: os.kill(os.getpid(), signal.SIGINT))
    assert finetune(ema_cfg(out, steps=8, eval_every=3))["steps"] == 5
    monkeypatch.undo()
    got = finetune(ema_cfg(out, steps=8, eval_every=3), resume=True)
    assert strip(metric_rows(out)) == strip(metric_rows(ref_out))
    assert (got["final"], got["final_raw"], got["best"]) == (ref["final"], ref["final_raw"], ref["best"])
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (ref_out, out))
    assert a["ema"].keys() == b["ema"].keys() and all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    wa, wb = (load_file(str(d / "model.safetensors")) for d in (ref_out, out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ema_keys_are_checked_and_fixed_for_a_resume(tmp_path):
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"'train\.ema_decay'.*\(0, 1\)"):
            build_config(ema_cfg("unused", ema_decay=bad))
    out = tmp_path / "run"
    finetune(ema_cfg(out, steps=2))
    for change in ({"ema_decay": 0.99}, {"ema_warmup": False}, {"ema_decay": None}):
        key = next(iter(change))
        with pytest.raises(ConfigError, match=rf"(?s)cannot resume.*train\.{key}"):
            finetune(ema_cfg(out, steps=4, **change), resume=True)
    assert finetune(ema_cfg(out, steps=4), resume=True)["steps"] == 4
