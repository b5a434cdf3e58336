"""ViT with RMT's Manhattan spatial decay: Fan et al., "RMT: Retentive Networks Meet Vision Transformers", CVPR 2024
(arXiv 2309.11523; official code qhfan/RMT).

    image --patch_embed--> [B, h*w, D]          (no cls token, no pos_embed)
        --blocks: softmax(q k^T / sqrt(d) + log γ_head * manhattan(i, j)) v--> norm --> mean of tokens --> head

The official RMT is a 4-stage hierarchical network whose blocks also carry a 3x3 depthwise conv (CPE), LePE and an
xPos-style rotation; this family isolates the positional idea this project reuses — the Manhattan decay
(`zoo.pe.rmt.ManhattanDecay`) — in a plain DeiT-geometry ViT, so it is *not* a reproduction of the RMT networks and
has no released weights.  Choices: no cls token and mean pooling, as RMT (a cls token would get bias 0 to and from
every token); decay parameters ``initial_value = 2, heads_range = 6``, the official setting for RMT's 14x14 stage,
which is the grid a /16 ViT sees at 224; the same decay in every block (RMT shares one ``RetNetRelPos2d`` per stage).
The decay depends only on grid offsets, so ``dynamic_img_size=True`` by default.
"""
from __future__ import annotations

from zoo.pe.rmt import ManhattanDecay
from zoo.registry import register_model

from .layers import timm_cfg
from .models import VisionTransformer, checkpoint_filter_fn

__all__ = ["ManhattanDecayFactory", "vit_rmt_tiny", "vit_rmt_small"]

RMT_PAPER = "https://arxiv.org/abs/2309.11523"


class ManhattanDecayFactory:
    """``pe_factory`` giving every block a `ManhattanDecay`: ``factory(layer_index, head_dim, num_heads)``."""

    def __init__(self, initial_value: float = 2.0, heads_range: float = 6.0):
        self.config = dict(kind="manhattan_decay", initial_value=float(initial_value), heads_range=float(heads_range))

    def __call__(self, layer_index: int, head_dim: int, num_heads: int) -> ManhattanDecay:
        return ManhattanDecay(num_heads, initial_value=self.config["initial_value"],
                              heads_range=self.config["heads_range"])

    def __repr__(self) -> str:
        return (f"ManhattanDecayFactory(initial_value={self.config['initial_value']}, "
                f"heads_range={self.config['heads_range']})")


def _create_vit_rmt(variant_kwargs: dict, **kwargs) -> VisionTransformer:
    """DeiT geometry, no APE, no cls token, mean pooling, Manhattan decay in every block.

    ``rmt=dict(initial_value=, heads_range=)`` overrides the decay parameters."""
    args = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, mlp_ratio=4.0, qkv_bias=True,
                norm_eps=1e-6, ape=False, class_token=False, global_pool="avg", dynamic_img_size=True)
    args.update(variant_kwargs)
    decay = kwargs.pop("rmt", None) or {}
    args.update(kwargs)
    if args.get("pe") is None:                                           # pe= swaps the decay
        args.setdefault("pe_factory", ManhattanDecayFactory(**decay))
    return VisionTransformer(**args)


@register_model(filter_fn=checkpoint_filter_fn, paper=RMT_PAPER, timm_cfg=timm_cfg(False))
def vit_rmt_tiny(**kwargs) -> VisionTransformer:
    """DeiT-Tiny/16 with RMT's Manhattan spatial decay on the attention logits, GAP, no APE (no released weights)."""
    return _create_vit_rmt(dict(embed_dim=192, depth=12, num_heads=3), **kwargs)


@register_model(filter_fn=checkpoint_filter_fn, paper=RMT_PAPER, timm_cfg=timm_cfg(False))
def vit_rmt_small(**kwargs) -> VisionTransformer:
    """DeiT-Small/16 with RMT's Manhattan spatial decay on the attention logits, GAP, no APE (no released weights)."""
    return _create_vit_rmt(dict(embed_dim=384, depth=12, num_heads=6), **kwargs)
