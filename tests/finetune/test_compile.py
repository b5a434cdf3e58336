"""``train.compile``: the training steps run through ``torch.compile`` (inductor, default mode), with the same
numbers and the same outputs as eager.

One tiny model per domain on the real data slices the domain tests use (`support.tiny_runs`): ViT-iRPE on digits,
a RoPE code LM on CPython files, a RoPE DNA encoder on splice junctions, LayoutLM on R-manual pages; 3 float32
steps each, compiled and eager. Compiling is what costs: about 25-50 s per model on one core here, under 3 minutes
for the four. On CUDA inductor emits Triton kernels instead of C++ ones; that path is not exercised here."""
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoo.errors import ConfigError
from zoo.finetune import finetune
from zoo.finetune import engine

from support.tiny_runs import DEBIAN_DATA, DOMAINS, tiny_cfg


def train_losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "train"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()                       # no compiled code or recompilation count carried between tests
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("domain", [pytest.param(d, marks=[pytest.mark.debian_data(DEBIAN_DATA[d])]
                                                 if d in DEBIAN_DATA else []) for d in DOMAINS])
def test_compiled_training_matches_eager(domain, tmp_path):
    eager = finetune(tiny_cfg(domain, tmp_path, tmp_path / "eager"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # dynamo's notes on graph breaks (e.g. a check reading .item())
        compiled = finetune(tiny_cfg(domain, tmp_path, tmp_path / "compiled", compile=True))
    a, b = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    # inductor may fuse and reorder float32 reductions: equal within 1e-4 relative (measured here: identical)
    assert len(a) == len(b) == 3 and b == pytest.approx(a, rel=1e-4)
    assert compiled["final"] == pytest.approx(eager["final"], rel=1e-4)
    # the compiled wrapper shares the model: checkpoint and weights have the eager run's keys (no _orig_mod.)
    ka = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)["model"].keys()
    kb = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)["model"].keys()
    assert list(ka) == list(kb)
    assert load_file(str(tmp_path / "compiled" / "model.safetensors")).keys() == \
        load_file(str(tmp_path / "eager" / "model.safetensors")).keys()


def test_a_model_that_fails_to_compile_is_a_clear_error_naming_the_model(tmp_path, monkeypatch):
    def broken_backend(gm, example_inputs):
        raise NotImplementedError("no lowering for aten.fancy_op")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=broken_backend))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"train\.compile=true: torch\.compile failed on model 'vit_irpe_tiny'.*"
                                          r"no lowering for aten\.fancy_op.*train\.compile=false") as e:
        finetune(tiny_cfg("vision", tmp_path, out, compile=True))
    assert isinstance(e.value.__cause__, torch._dynamo.exc.TorchDynamoException)     # the cause is kept
    assert not (out / "last.pt").exists()


def test_compile_may_change_on_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    finetune(tiny_cfg("vision", tmp_path, out, steps=1))
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)   # no compile cost
    assert finetune(tiny_cfg("vision", tmp_path, out, steps=2, compile=True), resume=True)["steps"] == 2
    assert len(compiled) == 1 and "train.compile" in engine.RESUME_MUTABLE_KEYS
