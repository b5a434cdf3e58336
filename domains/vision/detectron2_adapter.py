"""zoo's ViTs as a detectron2 backbone (optional: detectron2 is never required).

detectron2 (facebookresearch/detectron2) has no working PyPI release; see ``docs/detectron2.md`` to install it from
source. When it can be imported, importing this module registers ``build_zoo_vit_backbone`` in its
``BACKBONE_REGISTRY`` (select it with ``cfg.MODEL.BACKBONE.NAME = "build_zoo_vit_backbone"``) and `ZooViTBackbone`
subclasses detectron2's ``Backbone``. Without detectron2 the same class implements the same interface on top of
``nn.Module``, so it can be used (and tested) on its own:

    forward(images [B, C, H, W])  -> {out_feature: [B, D, H/p, W/p]}      H, W multiples of the patch size p
    output_shape()                -> {out_feature: ShapeSpec(channels=D, stride=p)}
    size_divisibility             -> p      (detectron2's ImageList pads every batch to a multiple of it)
    padding_constraints           -> {"size_divisibility": p, "square_size": 0}

The features are the ViT's final-norm patch tokens (prefix tokens such as cls dropped) laid back on their grid (the
model's ``forward_intermediates``, timm's feature contract); the
model is built with ``zoo.create(name, dynamic_img_size=True, num_classes=0)``, so any image size works (the
absolute position table is resampled per size and iRPE reads the grid from ``Positions``).
"""
from __future__ import annotations

from collections import namedtuple
from typing import Any, Dict, Optional

from torch import Tensor, nn

from domains.vision.layers import check_images   # absolute: this file is also loaded on its own

__all__ = ["ZooViTBackbone", "build_zoo_vit_backbone", "add_zoo_vit_config", "ShapeSpec", "HAS_DETECTRON2",
           "register_with_detectron2"]

try:   # detectron2 is optional; a broken build (missing compiled ops) counts as absent too
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY as _D2_REGISTRY
    from detectron2.modeling import Backbone as _BackboneBase
    HAS_DETECTRON2 = True
except (ImportError, OSError):
    ShapeSpec = namedtuple("ShapeSpec", ["channels", "height", "width", "stride"], defaults=(None, None, None, None))
    ShapeSpec.__doc__ = "Stand-in for detectron2.layers.ShapeSpec (same fields, all optional)."
    _D2_REGISTRY = None
    _BackboneBase = nn.Module
    HAS_DETECTRON2 = False


class ZooViTBackbone(_BackboneBase):
    """A zoo ViT (``vit_irpe_small``, ``vit_ape_tiny``, ...) as a single-scale detectron2 backbone.

    Args:
        name: registered zoo model name (optionally with a pretrained tag).
        out_feature: name of the one output map ("res4" fits detectron2's stride-16 C4 heads; "last_feat" is what
            ViTDet's ``SimpleFeaturePyramid`` reads by default).
        pretrained: load the model's released weights (``zoo.create(..., pretrained=True)``).
        in_chans: input channels (detectron2 passes ``len(cfg.MODEL.PIXEL_MEAN)``).
        model: an already built zoo `VisionTransformer` to wrap instead of ``name`` (must accept any image size).
        **model_kwargs: passed to ``zoo.create`` (e.g. ``depth``, ``drop_path_rate``, ``pretrained_file``).
    """

    def __init__(self, name: str = "vit_irpe_small", out_feature: str = "res4", pretrained: bool = False,
                 in_chans: int = 3, model: Optional[nn.Module] = None, **model_kwargs: Any):
        super().__init__()
        if model is None:
            import zoo
            model_kwargs.setdefault("num_classes", 0)
            model = zoo.create(name, pretrained=pretrained, dynamic_img_size=True, in_chans=in_chans,
                               **model_kwargs)
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "patch_size"):
            raise TypeError(f"ZooViTBackbone wraps a zoo ViT (with forward_intermediates), got "
                            f"{type(model).__name__}")
        if not getattr(model, "dynamic_img_size", False):
            raise ValueError("the wrapped ViT must be built with dynamic_img_size=True (detectron2 feeds images of "
                             "every size)")
        ph, pw = model.patch_size
        if ph != pw:
            raise ValueError(f"ZooViTBackbone needs square patches for a single stride, got {ph}x{pw}")
        self.net = model
        self.patch = int(ph)
        self.num_prefix = int(getattr(model, "num_prefix_tokens", 0))
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: int(model.embed_dim)}
        self._out_feature_strides = {out_feature: self.patch}

    @property
    def out_feature(self) -> str:
        return self._out_features[0]

    @property
    def size_divisibility(self) -> int:
        return self.patch

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.patch, "square_size": 0}

    def output_shape(self) -> Dict[str, "ShapeSpec"]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                for n in self._out_features}

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        check_images(images, getattr(self.net, "in_chans", None))
        b, _, hh, ww = images.shape
        if hh % self.patch or ww % self.patch:
            raise ValueError(f"image size {hh}x{ww} is not a multiple of the backbone's size_divisibility "
                             f"{self.patch}; pad the batch (detectron2's ImageList.from_tensors does so)")
        # the last block through the final norm, on its grid: timm's feature contract (forward_intermediates)
        fmap = self.net.forward_intermediates(images, indices=1, norm=True, output_fmt="NCHW",
                                              intermediates_only=True)[0]         # [B, D, H/p, W/p]
        return {self.out_feature: fmap}


# ---- detectron2 config and registry -----------------------------------------------------------------------------

_DEFAULTS = {"NAME": "vit_irpe_small", "OUT_FEATURE": "res4", "PRETRAINED": False, "WEIGHTS": ""}


def add_zoo_vit_config(cfg) -> None:
    """Add ``cfg.MODEL.ZOO_VIT.{NAME, OUT_FEATURE, PRETRAINED, WEIGHTS}`` (a detectron2 ``CfgNode``) with defaults."""
    from detectron2.config import CfgNode
    cfg.MODEL.ZOO_VIT = CfgNode(dict(_DEFAULTS))


def build_zoo_vit_backbone(cfg, input_shape) -> ZooViTBackbone:
    """detectron2 builder: ``cfg.MODEL.ZOO_VIT.NAME`` (zoo model), ``.OUT_FEATURE``, ``.PRETRAINED`` (released
    weights), ``.WEIGHTS`` (a local file / URL through zoo's checkpoint filters); ``input_shape.channels`` input
    channels. Missing keys take the defaults of `add_zoo_vit_config`."""
    node = getattr(getattr(cfg, "MODEL", None), "ZOO_VIT", None)

    def get(key):
        v = getattr(node, key, None) if node is not None else None
        return _DEFAULTS[key] if v is None else v

    channels = getattr(input_shape, "channels", None) or 3
    kwargs = {"pretrained_file": get("WEIGHTS")} if get("WEIGHTS") else {}
    return ZooViTBackbone(get("NAME"), out_feature=get("OUT_FEATURE"), pretrained=bool(get("PRETRAINED")),
                          in_chans=int(channels), **kwargs)


def register_with_detectron2() -> bool:
    """Register `build_zoo_vit_backbone` in detectron2's ``BACKBONE_REGISTRY`` (once); False without detectron2."""
    if _D2_REGISTRY is None:
        return False
    try:
        _D2_REGISTRY.get("build_zoo_vit_backbone")
    except KeyError:
        _D2_REGISTRY.register(build_zoo_vit_backbone)
    return True


register_with_detectron2()
