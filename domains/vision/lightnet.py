"""LightNet for images: linear attention with MD-LRPE on q/k and MD-TPE on the token stream.

Qin et al., "You Only Scan Once: Efficient Multi-dimension Sequential Modeling with LightNet", arXiv 2405.21022.
The official code (OpenNLPLab/LightNet) is not public; the parts follow the first author's xmixers / xopes
(REFERENCES.md §3) and the layout is a DeiT-style ViT, so that LightNet and the softmax ViTs of this zoo differ only
in the token mixer and the encodings::

    image [B, C, H, W] --patch_embed--> [B, h*w, D] --+ MD-TPE(x)--> [B, h*w, D]          (no cls token)
        --blocks(x, Positions.grid_2d(h, w))--> norm --> mean over tokens --> head
    block: x + attn(norm1(x))      attn = `zoo.nn.linear_attention.LinearAttention` (SiLU q, softmax-over-tokens k,
           x + mlp(norm2(x))              MD-LRPE cosine on q/k, sigmoid output gate, RMSNorm, proj)

Choices where the reference is silent (REFERENCES marks them unverified): MD-TPE is bidirectional (symmetric kernel
``λ^{|t−s|}``) and applied once, right after the patch embedding, as a residual (``x + MdTpe(x)``); the blocks keep the
ViT MLP and LayerNorms. No absolute table: any image size divisible by the patch size runs as is.
Keys: ``patch_embed.proj``, ``tpe.tpes.{0,1}.*``, ``blocks.i.{norm1, attn.qkv, attn.gate, attn.norm, attn.proj,
norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``.

`linear_scaling_bench` times one LightNet block against one softmax `Block` as the token count grows.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
from torch import Tensor, nn

from zoo.nn import Block, DropPath, Mlp
from zoo.nn.linear_attention import LinearAttention
from zoo.pe.lrpe import MdLrpeCosine
from zoo.pe.tpe import MdTpe
from zoo.positions import Positions
from zoo.registry import register_model

from .layers import (PatchEmbed, TimmClassifierMixin, eager, init_linears_and_norms,
                     new_head, patch_geometry, timm_cfg)

torch.fx.wrap("eager")   # one node of a traced model (see layers.eager)

__all__ = ["LightNetBlock", "LightNet", "linear_scaling_bench"]

LIGHTNET_PAPER = "https://arxiv.org/abs/2405.21022"


class LightNetBlock(nn.Module):
    """Pre-norm block with `LinearAttention` (MD-LRPE on q/k when ``lrpe``) and the ViT MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 drop_path: float = 0.0, lrpe: bool = True, lrpe_base: float = 10000.0, output_gate: bool = True,
                 norm_eps: float = 1e-6):
        super().__init__()
        head_dim = dim // num_heads
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = LinearAttention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop, output_gate=output_gate,
                                    pe=MdLrpeCosine(head_dim, num_heads, base=lrpe_base) if lrpe else None)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, pos: Optional[Positions] = None) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), pos))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class LightNet(TimmClassifierMixin, nn.Module):
    """LightNet image classifier (ViT layout, linear attention, MD-LRPE + MD-TPE, mean pooling).

    Args:
        img_size: default image size (int or (H, W)); other sizes divisible by the patch size run as they are.
        patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: as a ViT.
        drop_rate, drop_path_rate: dropout and stochastic depth (linear rule).
        norm_eps: LayerNorm epsilon.
        lrpe: MD-LRPE cosine on q/k in every block; ``lrpe_base`` its frequency base.
        tpe: MD-TPE added to the patch tokens after the embedding.
        output_gate: LightNet's sigmoid output gate in the attention.
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: Union[int, Tuple[int, int]] = 16,
                 in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 192, depth: int = 12,
                 num_heads: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-6, lrpe: bool = True, lrpe_base: float = 10000.0,
                 tpe: bool = True, output_gate: bool = True, dynamic_img_size: bool = True,
                 global_pool: str = "avg"):
        super().__init__()
        self.config: Dict[str, Any] = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            drop_rate=drop_rate, drop_path_rate=drop_path_rate, norm_eps=norm_eps, lrpe=lrpe, lrpe_base=lrpe_base,
            tpe=tpe, output_gate=output_gate, global_pool=global_pool)
        if global_pool not in self.POOLS:
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling; LightNet has no cls token), got "
                             f"{global_pool!r}")
        if not dynamic_img_size:
            raise ValueError("LightNet has no position table: every image size divisible by the patch size runs; "
                             "dynamic_img_size=False is not supported")
        if in_chans <= 0 or depth < 0 or num_classes < 0:
            raise ValueError(f"in_chans must be > 0, depth and num_classes >= 0; got in_chans={in_chans}, "
                             f"depth={depth}, num_classes={num_classes}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.img_size, self.patch_size, self.grid_size = patch_geometry(img_size, patch_size)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 0
        self.global_pool = global_pool

        self.patch_embed = PatchEmbed(self.patch_size, in_chans, embed_dim)
        self.tpe = MdTpe(embed_dim, num_heads, num_axes=2, bidirectional=True) if tpe else None
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist() if depth else []
        self.blocks = nn.ModuleList([
            LightNetBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                          drop_path=dpr[i], lrpe=lrpe, lrpe_base=lrpe_base, output_gate=output_gate,
                          norm_eps=norm_eps)
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """trunc-normal .02 on linears (zero biases), unit norms; the MD-TPE vectors keep their N(0, 1) init."""
        init_linears_and_norms(self)

    POOLS = ("", "avg")                                  # no cls token

    def _tokens(self, x: Tensor) -> Tuple[Tensor, Positions, Tuple[int, int]]:
        """``[B, C, H, W]`` -> the tokens entering block 0 ``[B, h*w, D]``, their `Positions` and the patch grid."""
        h, w = eager(self.patch_embed, "grid", x)                              # any size: no table
        x = self.patch_embed(x)                                                   # [B, h*w, D]
        pos = eager(self.patch_embed, "positions", h, w, x.device)
        if self.tpe is not None:
            x = eager(self.tpe, "embed", x, pos)                                  # x + MD-TPE(x)
        return self.pos_drop(x), pos, (h, w)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))                                          # [B, D] ('': [B, N, D])
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ---- scaling bench --------------------------------------------------------------------------------------------

def _grid_of(n: int) -> Tuple[int, int]:
    """The most square ``h x w`` with ``h * w = n``."""
    h = int(n ** 0.5)
    while n % h:
        h -= 1
    return h, n // h


def linear_scaling_bench(sizes: Sequence[int] = (64, 256, 1024, 4096), dim: int = 192, heads: int = 3,
                         repeats: int = 3, batch: int = 1, device: Union[str, torch.device] = "cpu",
                         seed: int = 0) -> List[dict]:
    """Forward+backward time of one LightNet block vs one softmax-attention `Block` (same MLP, same width) per token
    count, on the most square grid of that many tokens.

    Returns one dict per size: ``tokens``, ``grid``, ``linear_ms`` / ``softmax_ms`` (median of ``repeats`` after two
    warm-up calls), ``linear_growth`` / ``softmax_growth`` (time over the first size's time) and ``token_growth``
    (tokens over the first size's tokens): linear attention should track ``token_growth``, softmax attention its
    square once the n² term dominates. Timings only; read them as ratios within one run.
    """
    if not sizes or any(int(n) <= 0 for n in sizes):
        raise ValueError(f"sizes must be positive token counts, got {sizes!r}")
    if repeats <= 0:
        raise ValueError(f"repeats must be positive, got {repeats}")
    device = torch.device(device)
    torch.manual_seed(seed)
    linear = LightNetBlock(dim, heads).to(device)
    softmax = Block(dim, heads).to(device)

    def time_ms(block: nn.Module, x: Tensor, pos: Positions) -> float:
        def step():
            block(x, pos).float().square().mean().backward()
            block.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        step()                                                                    # warm-up (allocator, kernels)
        step()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
        return sorted(times)[len(times) // 2]

    rows: List[dict] = []
    for n in sizes:
        h, w = _grid_of(int(n))
        pos = Positions.grid_2d(h, w, device=device)
        x = torch.randn(batch, h * w, dim, device=device)
        rows.append(dict(tokens=h * w, grid=(h, w), linear_ms=time_ms(linear, x, pos),
                         softmax_ms=time_ms(softmax, x, pos)))
    first = rows[0]
    for r in rows:
        r["token_growth"] = r["tokens"] / first["tokens"]
        r["linear_growth"] = r["linear_ms"] / first["linear_ms"]
        r["softmax_growth"] = r["softmax_ms"] / first["softmax_ms"]
    return rows


# ---- entrypoints ------------------------------------------------------------------------------------------------

def _create_lightnet(variant_kwargs: dict, **kwargs) -> LightNet:
    args = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, mlp_ratio=4.0)
    args.update(variant_kwargs)
    args.update(kwargs)
    return LightNet(**args)


@register_model(paper=LIGHTNET_PAPER, timm_cfg=timm_cfg(False))
def lightnet_tiny(**kwargs) -> LightNet:
    """LightNet-Tiny/16: 192 wide, 3 heads, 12 blocks; linear attention + MD-LRPE, MD-TPE, mean pooling."""
    return _create_lightnet(dict(embed_dim=192, depth=12, num_heads=3), **kwargs)


@register_model(paper=LIGHTNET_PAPER, timm_cfg=timm_cfg(False))
def lightnet_small(**kwargs) -> LightNet:
    """LightNet-Small/16: 384 wide, 6 heads, 12 blocks; linear attention + MD-LRPE, MD-TPE, mean pooling."""
    return _create_lightnet(dict(embed_dim=384, depth=12, num_heads=6), **kwargs)
