"""The detectron2 backbone adapter, without detectron2: the Backbone interface (shapes, strides, divisibility,
non-square sizes), feature values against the wrapped ViT, and registration against a stand-in detectron2 package
built here with the same names (``detectron2.modeling.{Backbone, BACKBONE_REGISTRY}``, ``detectron2.layers.ShapeSpec``).
"""
import abc
import dataclasses
import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest
import torch

import zoo
from domains.vision import detectron2_adapter as A

SMALL = dict(img_size=64, depth=2)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return A.ZooViTBackbone("vit_irpe_tiny", **SMALL).eval()


def test_interface_shapes_and_strides(backbone):
    assert backbone.size_divisibility == 16
    assert backbone.padding_constraints == {"size_divisibility": 16, "square_size": 0}
    (name, spec), = backbone.output_shape().items()
    assert name == "res4" and spec.channels == 192 and spec.stride == 16
    assert spec.height is None and spec.width is None
    for h, w in [(64, 64), (48, 112), (160, 32)]:          # square and non-square, other than the build size
        with torch.no_grad():
            out = backbone(torch.randn(2, 3, h, w))
        assert list(out) == ["res4"] and out["res4"].shape == (2, 192, h // 16, w // 16)
        assert torch.isfinite(out["res4"]).all()


def test_features_are_the_vit_patch_tokens_on_their_grid(backbone):
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        fmap = backbone(x)["res4"]                                  # [1, 192, 3, 5]
        tokens = backbone.net.forward_features(x)                   # [1, 1 + 15, 192]
    # token of patch (row r, col c) is at 1 + r * 5 + c (cls first, row-major)
    torch.testing.assert_close(fmap[0, :, 2, 1], tokens[0, 1 + 2 * 5 + 1])
    torch.testing.assert_close(fmap[0, :, 0, 4], tokens[0, 1 + 4])
    # features depend on where things are: the map is not a per-patch function
    shifted = torch.roll(x, shifts=16, dims=3)
    with torch.no_grad():
        f2 = backbone(shifted)["res4"]
    assert (torch.roll(fmap, 1, dims=3) - f2).abs().max() > 1e-4


def test_bad_input_raises(backbone):
    with pytest.raises(ValueError, match="not a multiple of the backbone's size_divisibility 16"):
        backbone(torch.randn(1, 3, 50, 64))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        backbone(torch.randn(3, 64, 64))
    fixed = zoo.create("vit_irpe_tiny", **SMALL)
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        A.ZooViTBackbone(model=fixed)


def test_builder_reads_a_detectron2_style_config(monkeypatch):
    cfg = SimpleNamespace(MODEL=SimpleNamespace(ZOO_VIT=SimpleNamespace(
        NAME="vit_ape_tiny", OUT_FEATURE="last_feat", PRETRAINED=False, WEIGHTS="")))
    bb = A.build_zoo_vit_backbone(cfg, A.ShapeSpec(channels=1))
    assert bb.out_feature == "last_feat" and bb.net.in_chans == 1 and bb.net.blocks[0].attn.pe is None
    with torch.no_grad():
        assert bb(torch.randn(1, 1, 32, 48))["last_feat"].shape == (1, 192, 2, 3)
    # without a ZOO_VIT node the defaults apply (recorded rather than built: vit_irpe_small is slow to build)
    calls = []
    monkeypatch.setattr(A, "ZooViTBackbone", lambda *a, **k: calls.append((a, k)))
    A.build_zoo_vit_backbone(SimpleNamespace(MODEL=SimpleNamespace()), A.ShapeSpec(channels=3))
    assert calls == [(("vit_irpe_small",), dict(out_feature="res4", pretrained=False, in_chans=3))]


def test_registers_with_detectron2_when_importable(monkeypatch):
    """Load a fresh copy of the adapter while a stand-in detectron2 is importable."""
    class Backbone(torch.nn.Module, metaclass=abc.ABCMeta):
        @abc.abstractmethod
        def forward(self):
            pass

        @property
        def size_divisibility(self):
            return 0

        @property
        def padding_constraints(self):
            return {}

    @dataclasses.dataclass
    class ShapeSpec:
        channels: int = None
        height: int = None
        width: int = None
        stride: int = None

    class Registry:
        def __init__(self):
            self._obj = {}

        def register(self, fn):
            assert fn.__name__ not in self._obj
            self._obj[fn.__name__] = fn
            return fn

        def get(self, name):
            if name not in self._obj:
                raise KeyError(name)
            return self._obj[name]

    registry = Registry()
    d2 = types.ModuleType("detectron2")
    modeling = types.ModuleType("detectron2.modeling")
    layers = types.ModuleType("detectron2.layers")
    modeling.Backbone, modeling.BACKBONE_REGISTRY, layers.ShapeSpec = Backbone, registry, ShapeSpec
    for name, mod in [("detectron2", d2), ("detectron2.modeling", modeling), ("detectron2.layers", layers)]:
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("zoo_d2_adapter_copy", A.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.HAS_DETECTRON2 and copy.ShapeSpec is ShapeSpec
    assert registry.get("build_zoo_vit_backbone") is copy.build_zoo_vit_backbone
    assert copy.register_with_detectron2() is True                       # idempotent
    bb = registry.get("build_zoo_vit_backbone")(SimpleNamespace(MODEL=SimpleNamespace(ZOO_VIT=SimpleNamespace(
        NAME="vit_irpe_tiny", OUT_FEATURE="res4", PRETRAINED=False, WEIGHTS=""))), ShapeSpec(channels=3))
    assert isinstance(bb, Backbone)
    assert bb.output_shape() == {"res4": ShapeSpec(channels=192, stride=16)}
    assert bb.size_divisibility == 16
    # this environment has no detectron2: the real module fell back to nn.Module and a namedtuple
    assert not A.HAS_DETECTRON2 and A.ZooViTBackbone.__mro__[1] is torch.nn.Module
