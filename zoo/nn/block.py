"""Pre-norm transformer block (timm ViT key names: norm1, attn, norm2, mlp)."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Optional

from torch import Tensor, nn

from ..positions import Positions
from .attention import Attention, KVCache
from .layers import DropPath, LayerScale, Mlp

__all__ = ["Block", "shared_encodings"]


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, pe: Optional[nn.Module] = None,
                 causal: bool = False, norm_eps: float = 1e-6, init_values: Optional[float] = None,
                 act_layer=nn.GELU, **attention):
        """``attention``: further keywords of `Attention` (``mask``, ``temperature``, ``extension``,
        ``layer_idx``, ``chunk_size``)."""
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop, pe=pe,
                              causal=causal, **attention)
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


@contextlib.contextmanager
def shared_encodings(blocks: Iterable[nn.Module], pos: Optional[Positions] = None) -> Iterator[None]:
    """Open ``pe.shared(pos)`` once for every distinct encoding used by the attention of ``blocks``: for one
    forward, an encoding shared by all blocks builds what depends only on the positions (e.g. an ALiBi / T5 /
    KERPLE / FIRE bias) once instead of once per block."""
    seen = {}
    for blk in blocks:
        pe = getattr(getattr(blk, "attn", None), "pe", None)
        if pe is not None:
            seen.setdefault(id(pe), pe)
    with contextlib.ExitStack() as stack:
        for pe in seen.values():
            stack.enter_context(pe.shared(pos))
        yield
