"""``model.pe`` in a fine-tune config: the encoding swapped into the model is the one trained, saved and rebuilt."""
import pytest

import zoo
from zoo.errors import CheckpointError, ConfigError
from zoo.finetune.config import build_config
from zoo.finetune.engine import finetune, read_run

MODEL = {"name": "vit_ape_tiny", "kwargs": {"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}}


def _cfg(out, model):
    return {"task": "image_classification", "model": model, "data": {"name": "digits", "augment": False},
            "optim": {"lr": 2e-3, "warmup_steps": 0},
            "train": {"steps": 2, "batch_size": 16, "log_every": 1, "progress": False, "num_threads": 1},
            "output": {"dir": str(out)}}


def test_model_pe_trains_the_swapped_encoding_and_the_run_rebuilds_it(tmp_path):
    out = tmp_path / "run"
    s = finetune(_cfg(out, {**MODEL, "pe": {"name": "rope2d_mixed", "theta": 10.0}}))
    assert s["model_kwargs"]["pe"] == {"name": "rope2d_mixed", "theta": 10.0}
    name, kwargs, weights = read_run(out, "image_classification")
    assert name == "vit_ape_tiny" and kwargs["pe"]["name"] == "rope2d_mixed"
    model = zoo.create(name, pretrained_file=str(weights), **kwargs)      # strict load
    # RoPE-Mixed's learnable frequencies are in the saved weights (the strict load above needs them)
    assert [type(b.attn.pe).__name__ for b in model.blocks] == ["MixedRoPE2dLayer"]
    assert "pe.freqs" in zoo.hub.load_state_dict(weights)
    # the preset without the swap has no such parameter: its weights are not these
    plain = zoo.create(name, **{k: v for k, v in kwargs.items() if k != "pe"})
    with pytest.raises(CheckpointError, match="pe.freqs"):
        zoo.load_checkpoint(plain, zoo.hub.load_state_dict(weights), source=str(weights))


def test_model_pe_that_does_not_fit_names_both_positions_kinds(tmp_path):
    with pytest.raises(ValueError, match=r"1d.*2d|2d.*1d"):
        finetune(_cfg(tmp_path / "run", {**MODEL, "pe": "alibi"}))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_model_pe_and_model_kwargs_pe_together_are_refused(tmp_path):
    model = {**MODEL, "kwargs": {**MODEL["kwargs"], "pe": "rope2d_axial"}, "pe": "rope2d_mixed"}
    with pytest.raises(ConfigError, match="model.pe and model.kwargs.pe"):
        finetune(_cfg(tmp_path / "run", model))


def test_model_pe_is_a_known_config_key():
    cfg = build_config(_cfg("unused", {**MODEL, "pe": "rope2d_axial"}))
    assert cfg.model.pe == "rope2d_axial"
