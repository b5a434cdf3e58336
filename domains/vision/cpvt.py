"""CPVT: DeiT with a conditional positional encoding (PEG) instead of the learned position table.

Chu et al., "Conditional Positional Encodings for Vision Transformers", ICLR 2023 (arXiv 2102.10882)::

    image --patch_embed--> [B, h*w, D] --cat cls--> [B, 1+h*w, D]        (no pos_embed: ape=False)
        --block 0--> PEG (pos_block.0: depthwise 3x3 conv on the grid, cls bypasses it, residual)
        --blocks 1..11--> norm --> cls token (CPVT) or mean of patch tokens (CPVT-GAP) --> head

The PEG sits after the first block, the position the paper's placement ablation found best; CPVT-GAP drops the
cls token and mean-pools the patch tokens.  The PEG is size-agnostic, so ``dynamic_img_size=True`` by default: any
image whose sides divide by the patch size runs as is.  ``peg_kernel_size=`` changes the PEG kernel (3).

Weights: the CPVT repository (Meituan-AutoML/CPVT) ships no code and no DeiT-style (cls-token) CPVT checkpoints;
the official PEG code and weights are those of Twins (``PosCNN``; timm ``twins.py::PosConv``).  These entrypoints
therefore carry no pretrained cfg.  `checkpoint_filter_fn` reads our own / DeiT / timm ViT state dicts (through
`domains.vision.models.checkpoint_filter_fn`: the DeiT ``pos_embed`` is dropped since the model has none) and takes
the PEG weights of a Twins / timm Twins checkpoint.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Dict

from zoo.errors import CheckpointError
from zoo.pe.peg import PEG
from zoo.registry import register_model

from .checkpoint import unwrap_state_dict
from .layers import timm_cfg
from .models import VisionTransformer
from .models import checkpoint_filter_fn as _vit_filter_fn

__all__ = ["PEGFactory", "checkpoint_filter_fn", "cpvt_tiny", "cpvt_small", "cpvt_base", "cpvt_tiny_gap",
           "cpvt_small_gap", "cpvt_base_gap"]

_log = logging.getLogger(__name__)

CPVT_PAPER = "https://arxiv.org/abs/2102.10882"


class PEGFactory:
    """``pos_block_factory`` building one `PEG` (stride 1) of width ``embed_dim``: ``factory(embed_dim)``."""

    def __init__(self, kernel_size: int = 3):
        self.config = dict(kind="peg", kernel_size=kernel_size)

    def __call__(self, embed_dim: int) -> PEG:
        return PEG(embed_dim, kernel_size=self.config["kernel_size"], stride=1)

    def __repr__(self) -> str:
        return f"PEGFactory(kernel_size={self.config['kernel_size']})"


# ---- checkpoint conversion --------------------------------------------------------------------------------------

_POS_BLOCK_KEY = re.compile(r"^pos_block\.(\d+)\.(proj\.0\.(?:weight|bias))$")
_TWINS_KEY = re.compile(r"^(?:blocks\.\d+\.\d+\.|patch_embeds\.)")   # Twins nests blocks per stage


def checkpoint_filter_fn(state_dict: dict, model: VisionTransformer) -> dict:
    """Convert a CPVT / DeiT / timm ViT state dict, or take the PEG of a Twins checkpoint, for ``model``.

    - ``pos_block.{i}.proj.0.{weight,bias}`` map straight (Twins/timm ``PosConv`` keys are ours);
    - a Twins stage checkpoint (recognised by ``blocks.{stage}.{j}.*`` / ``patch_embeds.*``; one
      ``pos_block.{stage}`` per stage, widths growing): the stage PEGs whose shape fits the model's PEG
      (``[embed_dim, 1, k, k]``) are mapped, in stage order, onto the model's ``pos_block`` indices; every other
      Twins key is dropped (a Twins network is not a ViT), so such a checkpoint initialises only the PEG — load it
      with ``strict=False``;
    - everything else goes through the ViT filter (unwrapping, ``pos_embed`` dropped because CPVT has none, head,
      patch kernel, depth); mismatches are left for `zoo.load_checkpoint` to report.
    """
    sd = unwrap_state_dict(state_dict)
    if not any(_TWINS_KEY.match(k) for k in sd):
        return _vit_filter_fn(sd, model)

    ours = sorted(int(i) for i in model.pos_block.keys())
    if not ours:
        raise CheckpointError("a Twins checkpoint only provides PEG weights (pos_block.*), "
                              "but the model has no pos_block")
    stages: Dict[int, Dict[str, Any]] = {}                                        # stage -> {suffix: tensor}
    for k, v in sd.items():
        m = _POS_BLOCK_KEY.match(k)
        if m:
            stages.setdefault(int(m.group(1)), {})[m.group(2)] = v
    want = tuple(model.state_dict()[f"pos_block.{ours[0]}.proj.0.weight"].shape)   # (D, 1, k, k)
    fitting = [s for s in sorted(stages) if "proj.0.weight" in stages[s]
               and tuple(stages[s]["proj.0.weight"].shape) == want]
    if not fitting:
        shapes = {s: tuple(stages[s]["proj.0.weight"].shape) for s in sorted(stages) if "proj.0.weight" in stages[s]}
        raise CheckpointError(f"no Twins stage PEG fits the model's pos_block weight {want}: "
                              f"checkpoint pos_block weights {shapes}")
    out: Dict[str, Any] = {}
    for s, i in zip(fitting, ours):
        for suffix, v in stages[s].items():
            out[f"pos_block.{i}.{suffix}"] = v
        _log.info("Twins pos_block.%d -> pos_block.%d", s, i)
    _log.warning("Twins checkpoint: only the PEG weights of stage(s) %s are taken (%d of %d keys); load with "
                 "strict=False", fitting[:len(ours)], len(out), len(sd))
    return out


# ---- builders ---------------------------------------------------------------------------------------------------

def _create_cpvt(variant_kwargs: dict, **kwargs) -> VisionTransformer:
    """DeiT geometry, no learned APE, one PEG after block 0. ``peg_kernel_size`` sets the PEG kernel (3)."""
    args = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, mlp_ratio=4.0, qkv_bias=True,
                norm_eps=1e-6, ape=False, class_token=True, global_pool="token", dynamic_img_size=True,
                pos_block_after=(0,))
    args.update(variant_kwargs)
    kernel_size = kwargs.pop("peg_kernel_size", 3)
    args.update(kwargs)
    if args.get("pe") is None:                                           # pe= swaps the PEG
        args.setdefault("pos_block_factory", PEGFactory(kernel_size))
    return VisionTransformer(**args)


_GAP = dict(class_token=False, global_pool="avg")
_TINY = dict(embed_dim=192, depth=12, num_heads=3)
_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12)


@register_model(filter_fn=checkpoint_filter_fn, paper=CPVT_PAPER, timm_cfg=timm_cfg(False))
def cpvt_tiny(**kwargs) -> VisionTransformer:
    """CPVT-Ti/16: DeiT-Tiny with a PEG after block 0 instead of a position table (no released weights)."""
    return _create_cpvt(_TINY, **kwargs)


@register_model(filter_fn=checkpoint_filter_fn, paper=CPVT_PAPER, timm_cfg=timm_cfg(False))
def cpvt_small(**kwargs) -> VisionTransformer:
    """CPVT-S/16: DeiT-Small with a PEG after block 0 instead of a position table (no released weights)."""
    return _create_cpvt(_SMALL, **kwargs)


@register_model(filter_fn=checkpoint_filter_fn, paper=CPVT_PAPER, timm_cfg=timm_cfg(False))
def cpvt_base(**kwargs) -> VisionTransformer:
    """CPVT-B/16: DeiT-Base with a PEG after block 0 instead of a position table (no released weights)."""
    return _create_cpvt(_BASE, **kwargs)


@register_model(filter_fn=checkpoint_filter_fn, paper=CPVT_PAPER, timm_cfg=timm_cfg(False))
def cpvt_tiny_gap(**kwargs) -> VisionTransformer:
    """CPVT-Ti-GAP/16: CPVT-Ti without cls token, mean-pooled patch tokens (no released weights)."""
    return _create_cpvt(dict(_TINY, **_GAP), **kwargs)


@register_model(filter_fn=checkpoint_filter_fn, paper=CPVT_PAPER, timm_cfg=timm_cfg(False))
def cpvt_small_gap(**kwargs) -> VisionTransformer:
    """CPVT-S-GAP/16: CPVT-S without cls token, mean-pooled patch tokens (no released weights)."""
    return _create_cpvt(dict(_SMALL, **_GAP), **kwargs)


@register_model(filter_fn=checkpoint_filter_fn, paper=CPVT_PAPER, timm_cfg=timm_cfg(False))
def cpvt_base_gap(**kwargs) -> VisionTransformer:
    """CPVT-B-GAP/16: CPVT-B without cls token, mean-pooled patch tokens (no released weights)."""
    return _create_cpvt(dict(_BASE, **_GAP), **kwargs)
