"""RoPE-ViT: DeiT-III-style ViT with 2D rotary position embedding (Heo et al., "Rotary Position Embedding for Vision
Transformer", ECCV 2024, arXiv 2403.13298; naver-ai/rope-vit), RoPE-Axial and RoPE-Mixed, no absolute table.

    image [B, C, H, W] --patch_embed--> [B, h*w, D] --cat cls--> [B, 1+h*w, D]
        --blocks(x, Positions.grid_2d(h, w, num_prefix=1))--> norm --> cls token --> head
    block: x + gamma_1 * attn(norm1(x))   (q, k rotated by the 2D RoPE, cls token not rotated; fused SDPA)
           x + gamma_2 * mlp(norm2(x))

State dicts are key-for-key and shape-for-shape those of timm's ``vit_{small,base}_patch16_rope[_mixed]_224``
(timm ``Eva`` with ``attn_type='rope'``): ``cls_token``, ``patch_embed.proj``, ``[rope.freqs]``,
``blocks.i.{gamma_1, gamma_2, norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``, so timm's
weights load with ``load_state_dict`` as they are and our weights load into timm. `checkpoint_filter_fn` also reads
the official naver-ai checkpoints (``{'model': sd}``, model-level ``freqs [2, depth, h*d/2]``, ``freqs_t_x/y``
buffers) and adapts a checkpoint to the model being built (fewer blocks, patch kernel, input channels, head).

The timm facts followed (timm 1.0.x ``eva.py`` / ``pos_embed_sincos.py``): axial = ``RotaryEmbeddingCat`` with
``in_pixels=False`` (integer patch-index grid), ``temperature=100``, ``grid_indexing='xy'`` (column pairs first),
``grid_offset=0``, no ``ref_feat_shape`` (grid rebuilt, not rescaled, at other sizes); mixed = ``RotaryEmbeddingMixed``,
``temperature=10``, ``freqs [2, depth, heads, d/2]`` at ``rope.freqs``; both interleaved pairs
(``rope_rotate_half=False``); ``qkv_bias=True``, ``init_values=1e-5``, LayerNorm eps 1e-6, token pooling with the
final ``norm`` and no ``fc_norm``, no ``pos_embed`` (``use_abs_pos_emb=False``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.fx
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from zoo.errors import CheckpointError
from zoo.nn import Attention, DropPath, Mlp
from zoo.nn.fit import check_fit, register_family
from zoo.nn.transformer import any_spec, spec_label
from zoo.pe import build as build_pe
from zoo.pe.rope2d import AxialRoPE2d, MixedRoPE2d
from zoo.positions import Positions
from zoo.registry import PretrainedCfg, register_model

from .checkpoint import drop_blocks_beyond, fit_patch_embed, keep_own_head_if_mismatched, unwrap_state_dict
from .layers import (IMAGENET_MEAN, IMAGENET_STD, PatchEmbed, TimmClassifierMixin, eager, tie_params,
                     init_linears_and_norms, new_head, patch_geometry, timm_cfg)

torch.fx.wrap("eager")   # one node of a traced model (see layers.eager)
torch.fx.wrap("tie_params")

__all__ = ["RoPEBlock", "RoPEVisionTransformer", "checkpoint_filter_fn"]

ROPE_VIT_PAPER = "https://arxiv.org/abs/2403.13298"
#: timm's pretrained cfg of the naver RoPE-ViT weights (crop 0.9, bicubic); fixed size like timm's
ROPE_TIMM = timm_cfg(True, crop_pct=0.9)
ROPE_KINDS = ("axial", "mixed")


# ---- block ------------------------------------------------------------------------------------------------------

class RoPEBlock(nn.Module):
    """Pre-norm block with layer scale as bare parameters ``gamma_1`` / ``gamma_2`` (DeiT-III / EVA key names).

    zoo.nn.Block names its layer scale ``ls1.gamma``; timm's Eva and the official RoPE-ViT use ``gamma_1``, hence
    this block, composed from the shared `Attention` (fused SDPA, ``pe.rotate``) and `Mlp`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: Optional[float] = 1e-5, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, pe: Optional[nn.Module] = None, norm_eps: float = 1e-6):
        super().__init__()
        self.init_values = init_values
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, pe=pe)
        if init_values is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))
        else:
            self.register_parameter("gamma_1", None)
            self.register_parameter("gamma_2", None)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, pos: Optional[Positions] = None) -> Tensor:
        y = self.attn(self.norm1(x), pos)
        x = x + self.drop_path1(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path2(y if self.gamma_2 is None else self.gamma_2 * y)


# ---- model ------------------------------------------------------------------------------------------------------

class RoPEVisionTransformer(TimmClassifierMixin, nn.Module):
    """ViT with 2D RoPE in every attention (RoPE-Axial or RoPE-Mixed) and no absolute position table.

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: as timm.
        rope: ``"axial"`` (fixed frequencies, `AxialRoPE2d`) or ``"mixed"`` (learnable, `MixedRoPE2d` at ``rope``);
            None with ``pe=``.
        rope_theta: frequency base; default 100 for axial, 10 for mixed (the paper's and timm's values).
        pe: any 2D encoding of `zoo.pe` in place of the 2D RoPE (then ``rope=None``, no ``rope_theta``): a registered
            name or ``{"name": ..., **kwargs}``, built with this model's geometry (``dim``, ``head_dim``,
            ``num_heads``, ``depth``, ``grid_size``, ``max_len`` = tokens).  Attention encodings sit at
            ``blocks.i.attn.pe`` (one per block) or, when the encoding holds every layer (it has ``layer(i)``, e.g.
            ``rope2d_mixed``), at ``pe`` with a view per block; embedding-only encodings (``embed`` hook) are added
            to the tokens after the class token (``embed_pe``).  Other positions kinds raise
            `zoo.nn.fit.PEFitError` naming both kinds.  The model then has no ``rope`` module, so checkpoints of
            the RoPE-Axial presets (no position parameters) load into parameter-free encodings as they are.
        init_values: layer-scale initial value (1e-5); None for no layer scale.
        class_token, global_pool: ``"token"`` (cls token, final ``norm``) or ``"avg"`` (mean of the patch tokens,
            then ``fc_norm``, no final ``norm``: timm Eva's placement).
        drop_rate (before the head), pos_drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: as timm Eva.
        norm_eps: LayerNorm epsilon.
        dynamic_img_size: accept any image size divisible by the patch size (the RoPE grid follows the image).
        head_init_scale: the head's initial weights and bias are scaled by this (timm Eva: 0.001).
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: Union[int, Tuple[int, int]] = 16,
                 in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, rope: Optional[str] = "axial",
                 rope_theta: Optional[float] = None, init_values: Optional[float] = 1e-5, class_token: bool = True,
                 global_pool: str = "token", drop_rate: float = 0.0, pos_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-6, dynamic_img_size: bool = False, head_init_scale: float = 0.001,
                 pe: Union[None, str, Mapping[str, Any]] = None):
        super().__init__()
        if pe is not None:
            if rope is not None or rope_theta is not None:
                raise ValueError(f"pe= replaces the model's 2D RoPE: give it with rope=None and without rope_theta "
                                 f"(got rope={rope!r}, rope_theta={rope_theta!r})")
        elif rope not in ROPE_KINDS:
            raise ValueError(f"rope must be one of {ROPE_KINDS} (or None with pe=...), got {rope!r}")
        if global_pool not in self.POOLS:
            raise ValueError(f"global_pool must be 'token', 'avg' or '' (no pooling), got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg'")
        if in_chans <= 0 or depth < 0 or num_classes < 0 or embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"in_chans, embed_dim, num_heads must be > 0, depth and num_classes >= 0; got "
                             f"in_chans={in_chans}, embed_dim={embed_dim}, num_heads={num_heads}, depth={depth}, "
                             f"num_classes={num_classes}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if pe is None and (embed_dim // num_heads) % 4:
            raise ValueError(f"embed_dim {embed_dim} / num_heads {num_heads} must give a head dim divisible by 4 "
                             f"(2D RoPE rotates pairs along two axes)")
        theta = None if pe is not None else (
            float(rope_theta) if rope_theta is not None else (100.0 if rope == "axial" else 10.0))
        self.config: Dict[str, Any] = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            rope=rope, rope_theta=theta, init_values=init_values, class_token=class_token, global_pool=global_pool,
            drop_rate=drop_rate, pos_drop_rate=pos_drop_rate, proj_drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm_eps=norm_eps,
            dynamic_img_size=dynamic_img_size, head_init_scale=head_init_scale,
            pe=spec_label(pe) and any_spec(pe))
        self.img_size, self.patch_size, self.grid_size = patch_geometry(img_size, patch_size)
        self.in_chans, self.num_classes, self.global_pool = in_chans, num_classes, global_pool
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.dynamic_img_size = dynamic_img_size
        self.rope_kind = rope
        self.head_init_scale = head_init_scale
        head_dim = embed_dim // num_heads

        # registration order = timm Eva's state-dict order: cls_token, patch_embed, rope, blocks, norm, fc_norm, head
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.patch_embed = PatchEmbed(self.patch_size, in_chans, embed_dim,
                                      None if dynamic_img_size else self.img_size, " (RoPE needs no resampling)",
                                      self.num_prefix_tokens)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.embed_pe: Optional[nn.Module] = None
        if pe is not None:
            self.rope = None
            pes = self._encodings(pe, depth, num_heads)
        elif rope == "axial":
            self.rope = AxialRoPE2d(head_dim, theta=theta)        # stateless: one instance serves every block
            pes = [self.rope] * depth
        else:
            self.rope = MixedRoPE2d(head_dim, num_heads, depth=max(depth, 1), theta=theta)  # rope.freqs
            pes = [self.rope.layer(i) for i in range(depth)]
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist() if depth else []
        self.blocks = nn.ModuleList([
            RoPEBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, init_values=init_values,
                      proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i], pe=pes[i],
                      norm_eps=norm_eps)
            for i in range(depth)])
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self.init_weights()

    def _encodings(self, spec, depth: int, num_heads: int) -> list:
        """Check ``spec`` against the model (2D positions) and build the blocks' encodings (None each for an
        embedding-only encoding, which becomes ``embed_pe``)."""
        meta = check_fit(spec, model=type(self).__name__, positions=("2d",), causal=False)
        if "num_prefix" in meta.accepts:                                          # tables with prefix rows
            spec = {"num_prefix": self.num_prefix_tokens, **any_spec(spec)}
        h, w = self.grid_size
        geometry = dict(dim=self.embed_dim, head_dim=self.embed_dim // num_heads, num_heads=num_heads, causal=False,
                        max_len=self.num_prefix_tokens + h * w, depth=max(depth, 1), grid_size=self.grid_size)
        first = build_pe(spec, **geometry)
        if not (first.has_rotate or first.has_bias or first.needs_weights):
            self.embed_pe = first                                                 # tokens only
            return [None] * depth
        if hasattr(first, "layer"):                                               # one module, a view per layer
            self.pe = first
            return [first.layer(i) for i in range(depth)]
        return [first if i == 0 else build_pe(spec, **geometry) for i in range(depth)]

    # ---- init (timm Eva / BEiT: trunc-normal .02 linears, depth-rescaled output projections, small head) -------
    def init_weights(self) -> None:
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_linears_and_norms(self)
        with torch.no_grad():
            for i, blk in enumerate(self.blocks):
                scale = math.sqrt(2.0 * (i + 1))
                blk.attn.proj.weight.div_(scale)
                blk.mlp.fc2.weight.div_(scale)
                if blk.init_values is not None:
                    blk.gamma_1.fill_(blk.init_values)
                    blk.gamma_2.fill_(blk.init_values)
            if isinstance(self.head, nn.Linear) and self.head_init_scale:
                self.head.weight.mul_(self.head_init_scale)
                self.head.bias.mul_(self.head_init_scale)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        if isinstance(getattr(self, "pe", None), MixedRoPE2d):
            return {"cls_token", "pe.freqs"}
        return {"cls_token", "rope.freqs"} if self.rope_kind == "mixed" else {"cls_token"}

    # ---- forward ----------------------------------------------------------------------------------------------
    def _tokens(self, x: Tensor) -> Tuple[Tensor, Positions, Tuple[int, int]]:
        """``[B, C, H, W]`` -> the tokens entering block 0 ``[B, num_prefix + h*w, D]``, their `Positions` and the
        patch grid (`TimmClassifierMixin.forward_features` runs the blocks)."""
        h, w = eager(self.patch_embed, "grid", x)
        x = self.patch_embed(x)                                                   # [B, h*w, D]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1+h*w, D]
        pos = eager(self.patch_embed, "positions", h, w, x.device)
        if self.embed_pe is not None:
            x = eager(self.embed_pe, "embed", x, pos)
        if isinstance(self.rope, MixedRoPE2d) and is_fx_symbolic_tracing():
            x = tie_params(x, self.rope.freqs)          # the graph owns rope.freqs, which the blocks read via views
        return self.pos_drop(x), pos, (h, w)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


register_family("RoPE-ViT", positions=("2d",), causal=False, models="vit_rope_*",
                note="in place of the 2D RoPE: attention hooks one per block (or one module with a view per layer); "
                     "embed hooks on the tokens after the class token; layer scale and timm Eva keys kept")


# ---- checkpoint conversion --------------------------------------------------------------------------------------

_OFFICIAL_BUFFERS = ("freqs_t_x", "freqs_t_y", "freqs_cis")


def checkpoint_filter_fn(state_dict: dict, model: RoPEVisionTransformer) -> dict:
    """Convert a timm RoPE-ViT (Eva) or official naver-ai RoPE-ViT state dict to ``model``'s layout.

    - ``{'model': sd}`` / ``{'state_dict': sd}`` / ``{'model_ema': sd}`` unwrapped, ``module.`` stripped;
    - official ``freqs [2, depth, h*d/2]`` -> ``rope.freqs [2, depth, h, d/2]``; official grid buffers
      (``freqs_t_x``, ``freqs_t_y``) and any ``rope.*`` buffer other than ``rope.freqs`` dropped (recomputed);
    - blocks beyond the model's depth dropped, ``rope.freqs`` cut to the same depth;
    - ``patch_embed.proj.weight`` adapted to ``in_chans`` and resampled to the patch size;
    - a head of another class count replaced by the model's freshly initialised one (warning);
    - an axial checkpoint for a mixed model (or the reverse), or one with an absolute ``pos_embed`` (timm's
      ``*_rope_ape_*`` / official ``use_ape``), raises `CheckpointError`.
    Missing and unexpected keys are left for `zoo.load_checkpoint` to report.
    """
    sd = unwrap_state_dict(state_dict)
    own = model.state_dict()
    depth = len(model.blocks)
    out: Dict[str, Any] = {}
    for k, v in sd.items():
        if k in _OFFICIAL_BUFFERS:
            continue
        if k == "freqs":                                                         # official RoPE-Mixed
            k = "rope.freqs"
            if hasattr(v, "ndim") and v.ndim == 3 and model.rope_kind == "mixed":
                v = v.reshape(v.shape[0], v.shape[1], model.rope.num_heads, -1)  # [2, L, h, d/2]
        elif k.startswith("rope.") and k != "rope.freqs":
            continue                                                             # fixed tables, recomputed
        out[k] = v
    out = drop_blocks_beyond(out, depth)

    if "pos_embed" in out:
        raise CheckpointError("the checkpoint has an absolute position table (pos_embed: a RoPE + APE variant); "
                              "this RoPE-ViT family has none, so its outputs would differ")
    has_freqs = "rope.freqs" in out
    if model.rope_kind is None and has_freqs:
        raise CheckpointError(f"the checkpoint is RoPE-Mixed (it has learnable rope.freqs) but the model was built "
                              f"with pe={model.config['pe']!r} in place of the 2D RoPE, which has no place for them; "
                              f"build a vit_rope_mixed_* model")
    if model.rope_kind == "axial" and has_freqs:
        raise CheckpointError("the checkpoint is RoPE-Mixed (it has learnable rope.freqs) but the model is "
                              "RoPE-Axial; build a vit_rope_mixed_* model")
    if model.rope_kind == "mixed" and not has_freqs and any(k.startswith("blocks.") for k in out):
        raise CheckpointError("the checkpoint has no rope.freqs (RoPE-Axial or a plain ViT) but the model is "
                              "RoPE-Mixed; build a vit_rope_* (axial) model")
    if has_freqs and depth and out["rope.freqs"].ndim == 4 and out["rope.freqs"].shape[1] > depth:
        out["rope.freqs"] = out["rope.freqs"][:, :depth].contiguous()

    fit_patch_embed(out, own)
    keep_own_head_if_mismatched(out, own, model.num_classes)
    return out


# ---- builders ---------------------------------------------------------------------------------------------------

_SMALL = dict(embed_dim=384, depth=12, num_heads=6)
_BASE = dict(embed_dim=768, depth=12, num_heads=12)


def _create(variant: dict, rope: str, **kwargs) -> RoPEVisionTransformer:
    # pe= replaces the preset's RoPE kind (the preset stays the rest of the architecture)
    rope = None if kwargs.get("pe") is not None else rope
    args = dict(img_size=224, patch_size=16, mlp_ratio=4.0, qkv_bias=True, init_values=1e-5, rope=rope)
    args.update(variant)
    args.update(kwargs)
    return RoPEVisionTransformer(**args)


def _cfg(timm_name: str) -> Dict[str, PretrainedCfg]:
    return {"naver_in1k": PretrainedCfg(
        hf_hub_id=f"timm/{timm_name}.naver_in1k", filename="model.safetensors", license="Apache-2.0",
        paper=ROPE_VIT_PAPER, source="naver-ai/rope-vit (DeiT-III recipe), via timm", num_classes=1000,
        input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        notes=f"timm's {timm_name} weights; same keys as this model")}


@register_model(cfgs=_cfg("vit_small_patch16_rope_224"), filter_fn=checkpoint_filter_fn, paper=ROPE_VIT_PAPER,
                timm_cfg=ROPE_TIMM)
def vit_rope_small(**kwargs) -> RoPEVisionTransformer:
    """ViT-S/16 with RoPE-Axial (theta 100), layer scale 1e-5, no absolute position table (timm-compatible keys)."""
    return _create(_SMALL, "axial", **kwargs)


@register_model(cfgs=_cfg("vit_small_patch16_rope_mixed_224"), filter_fn=checkpoint_filter_fn,
                paper=ROPE_VIT_PAPER, timm_cfg=ROPE_TIMM)
def vit_rope_mixed_small(**kwargs) -> RoPEVisionTransformer:
    """ViT-S/16 with RoPE-Mixed (learnable per-layer, per-head 2D frequencies, init theta 10) (timm-compatible)."""
    return _create(_SMALL, "mixed", **kwargs)


@register_model(cfgs=_cfg("vit_base_patch16_rope_224"), filter_fn=checkpoint_filter_fn, paper=ROPE_VIT_PAPER,
                timm_cfg=ROPE_TIMM)
def vit_rope_base(**kwargs) -> RoPEVisionTransformer:
    """ViT-B/16 with RoPE-Axial (theta 100), layer scale 1e-5, no absolute position table (timm-compatible keys)."""
    return _create(_BASE, "axial", **kwargs)


@register_model(cfgs=_cfg("vit_base_patch16_rope_mixed_224"), filter_fn=checkpoint_filter_fn,
                paper=ROPE_VIT_PAPER, timm_cfg=ROPE_TIMM)
def vit_rope_mixed_base(**kwargs) -> RoPEVisionTransformer:
    """ViT-B/16 with RoPE-Mixed (learnable per-layer, per-head 2D frequencies, init theta 10) (timm-compatible)."""
    return _create(_BASE, "mixed", **kwargs)
