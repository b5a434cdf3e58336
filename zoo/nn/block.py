"""Pre-norm transformer block (timm ViT key names: norm1, attn, norm2, mlp)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..positions import Positions
from .attention import Attention, KVCache
from .layers import DropPath, LayerScale, Mlp

__all__ = ["Block"]


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, pe: Optional[nn.Module] = None,
                 causal: bool = False, norm_eps: float = 1e-6, init_values: Optional[float] = None,
                 act_layer=nn.GELU):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop, pe=pe,
                              causal=causal)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, pos: Optional[Positions] = None, cache: Optional[KVCache] = None) -> Tensor:
        """``x [b, n, c]``; with a `KVCache`, ``x`` is the new tokens and ``pos`` describes all keys."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), pos, cache)))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x
