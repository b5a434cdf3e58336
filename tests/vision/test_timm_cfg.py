"""Every vision classifier has a timm pretrained cfg that timm's own helpers read (``resolve_data_config``,
``create_transform``, ``get_pretrained_cfg_value``, ``list_models(pretrained=True)``), and the cfg describes the
model: its stem conv and head exist, it runs at the cfg's input size with the cfg's classes, and a model declared
``fixed_input_size`` refuses another size while the others take it."""
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import zoo
from timm_test_helpers import timm_models
from zoo.registry import _REGISTRY, TIMM_CFG_FIELDS

TIMM_MODELS = timm_models()
VISION = [n for n in zoo.list_models() if _REGISTRY[n].domain == "vision"]


def test_timm_sees_the_vision_classifiers_and_no_detector():
    assert TIMM_MODELS and set(TIMM_MODELS) <= set(VISION)
    for name in VISION:
        has_head = bool(_REGISTRY[name].timm_cfg.get("classifier"))
        assert (name in TIMM_MODELS) == has_head, f"{name}: registered with timm iff it declares a classifier cfg"
    assert not timm.is_model("detr_irpe_tiny") and not timm.is_model("detr_irpe_r50")


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_the_timm_cfg_describes_the_model(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    model = timm.create_model(name, device="meta")
    assert model.pretrained_cfg is model.default_cfg
    ours = {k: v for k, v in model.pretrained_cfg.items() if k in TIMM_CFG_FIELDS}
    assert ours == {k: cfg.get(k) for k in ours}, "the model's cfg is what timm registered"
    assert {k for k, v in cfg.items() if v not in (None, False, "center")} <= set(ours) | {"tag"}
    data = resolve_data_config(model=model)
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation"):
        assert data[key] == cfg[key] == timm.get_pretrained_cfg_value(name, key), key
    assert re.fullmatch(r"arXiv:\d{4}\.\d{4,5}", cfg["paper_ids"]), cfg["paper_ids"]
    sd = model.state_dict()
    assert cfg["first_conv"] + ".weight" in sd and cfg["classifier"] + ".weight" in sd
    assert sd[cfg["first_conv"] + ".weight"].shape[1] == cfg["input_size"][0]
    assert sd[cfg["classifier"] + ".weight"].shape[0] == cfg["num_classes"]
    c, h, w = cfg["input_size"]
    with torch.no_grad():
        assert tuple(model.eval()(torch.empty(1, c, h, w, device="meta")).shape) == (1, cfg["num_classes"])
        other = torch.empty(1, c, h * 2 // 3 // 16 * 16, w * 2 // 3 // 16 * 16, device="meta")
        if cfg["fixed_input_size"]:
            with pytest.raises(ValueError, match="expected a 224x224 image"):
                model(other)
        else:
            assert tuple(model(other).shape) == (1, cfg["num_classes"])


def test_pretrained_tags_are_timms_pretrained_models():
    ours = {f"{n}.{t}" for n in TIMM_MODELS for t, c in _REGISTRY[n].cfgs.items() if c.has_weights}
    assert ours and {m for m in timm.list_models(pretrained=True) if m.split(".")[0] in TIMM_MODELS} == ours
    for full in ours:
        name, tag = full.split(".")
        own, cfg = _REGISTRY[name].cfgs[tag], timm.models.get_pretrained_cfg(full)
        assert (cfg.url or None, cfg.hf_hub_id, cfg.license) == (own.url, own.hf_hub_id, own.license), full
        assert cfg.num_classes == own.num_classes and tuple(cfg.input_size) == tuple(own.input_size), full


def test_timm_eval_transform_from_the_cfg():
    model = timm.create_model("vit_rope_small", device="meta")
    tf = create_transform(**resolve_data_config(model=model))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    x = tf(img)
    assert tuple(x.shape) == (3, 224, 224)
    # crop_pct 0.9: the short side is resized to 224 / 0.9 = 248 (timm rounds down), then the centre crop
    assert resolve_data_config(model=model)["crop_pct"] == 0.9


def test_pretrained_cfg_overlay_file_loads_that_file(tmp_path):
    torch.manual_seed(0)
    src = zoo.create("vit_irpe_tiny", img_size=32, depth=1, num_classes=3)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    model = timm.create_model("vit_irpe_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              img_size=32, depth=1, num_classes=3)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert model.pretrained_cfg["file"] == str(path)
    # a tag reaches zoo as timm passes it ("model.tag" -> pretrained_cfg="tag")
    tagged = timm.create_model("vit_irpe_tiny.in1k", img_size=32, depth=1, num_classes=3)
    assert tagged.pretrained_cfg["tag"] == "in1k" and tagged.pretrained_cfg["url"].endswith(".pth")
