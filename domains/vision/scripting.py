"""TorchScript forms of the vision classifiers: the ViT family (`models.VisionTransformer`: learned table, iRPE, RMT
decay, CPVT's PEG), the RoPE-ViTs (axial, mixed) and LightNet (linear attention, MD-LRPE, MD-TPE).

The eager model works from Python objects (`Positions`, per-grid caches, kernels chosen in Python), which
TorchScript cannot compile. `scriptable(model)` returns a module of plain tensor code that computes the same
function with the same parameter objects (training one trains the other):

- the blocks' layers are the model's own modules (``norm1``, ``attn.qkv``, ``attn.proj``, ``mlp``, ...), under
  the same names, so the state dict has the model's keys;
- what depends only on the grid becomes non-persistent buffers, built once for the model's grid: iRPE's bucket ids;
  the RMT decay and CPVT's PEG follow the image size at run time (those models take any size);
- the attention is ``softmax(q k^T * scale + bias) v`` through SDPA with the bias as its float mask, and on the
  weights when iRPE encodes the values (as the eager attention).

`VisionTransformer.__prepare_scriptable__` returns it, so ``torch.jit.script(model)`` compiles this form; timm's
``set_scriptable(True)`` (``timm.create_model(..., scriptable=True)``) builds it directly, so torch.fx graphs of it
script too. An encoding this form does not cover raises `zoo.errors.NotScriptableError` naming it.
"""
from typing import List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import NotScriptableError
from zoo.pe.irpe import IRPE, IRPECrossTable
from zoo.pe.peg import PEG
from zoo.pe.rmt import ManhattanDecay
from zoo.pe.rope2d import AxialRoPE2d, MixedRoPE2d, _pad_angles

__all__ = ["scriptable"]


def patch_grid(x: Tensor, in_chans: int, patch_h: int, patch_w: int, fixed_h: int, fixed_w: int) -> Tuple[int, int]:
    """The ``(h, w)`` patch grid of images ``x [B, in_chans, H, W]`` (``fixed_h, fixed_w``: the only grid taken,
    -1: any), for the scripted form (TorchScript code; one node of a torch.fx graph)."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError("expected images [B, in_chans, H, W] with the model's in_chans")
    if x.shape[2] % patch_h != 0 or x.shape[3] % patch_w != 0:
        raise ValueError("the image size is not divisible by the patch size")
    h, w = x.shape[2] // patch_h, x.shape[3] // patch_w
    if fixed_h >= 0 and (h != fixed_h or w != fixed_w):
        raise ValueError("the scripted form takes the model's own image size (a learned table or iRPE's bucket ids "
                         "are built for it); build the model with img_size set to this size")
    return h, w


torch.fx.wrap("patch_grid")


def pool_tokens(x: Tensor, pool: str, num_prefix: int) -> Tensor:
    """``[B, N, D] -> [B, D]``: ``'token'`` the cls token, ``'avg'`` the mean of the patch tokens; ``''`` as is
    (as `layers.TimmClassifierMixin.pool`)."""
    if pool == "token":
        return x[:, 0]
    if pool == "avg":
        return x[:, num_prefix:].mean(dim=1)
    return x


class _Contextual(nn.Module):
    """One contextual iRPE table (its ``lookup_table_weight``, the model's parameter) and its bucket ids."""

    def __init__(self, table: nn.Module, ids: Tensor, flat: Tensor):
        super().__init__()
        self.lookup_table_weight = table.lookup_table_weight
        self.num_buckets = table.num_buckets
        self.register_buffer("ids", ids.clone(), persistent=False)
        self.register_buffer("flat", flat.clone(), persistent=False)

    def logits(self, x: Tensor, scale: float) -> Tensor:
        n = self.ids.shape[0]
        b, h = x.shape[0], x.shape[1]
        lut = torch.matmul(x, self.lookup_table_weight * scale)                  # [b, h, n, nb]
        # out[b, h, i, j] = lut[b, h, i, ids[i, j]], through the flat index i * nb + ids[i, j]
        return lut.reshape(b, h, -1).index_select(2, self.flat).view(b, h, n, n)  # [b, h, n, n]

    def values(self, attn: Tensor) -> Tensor:
        b, h, n = attn.shape[0], attn.shape[1], attn.shape[2]
        acc = attn.new_zeros(b * h, n * self.num_buckets, dtype=torch.float32)
        acc.index_add_(1, self.flat, attn.reshape(b * h, n * n).float())         # weights summed per bucket
        acc = acc.view(b, h, n, self.num_buckets).to(attn.dtype)
        return torch.matmul(acc, self.lookup_table_weight)                        # [b, h, n, d]


class _Bias(nn.Module):
    """One bias-mode iRPE table (``lookup_table_bias``) and its bucket ids."""

    def __init__(self, table: nn.Module, ids: Tensor, flat: Tensor):
        super().__init__()
        self.lookup_table_bias = table.lookup_table_bias
        self.register_buffer("ids", ids.clone(), persistent=False)

    def logits(self, x: Tensor, scale: float) -> Tensor:
        n = self.ids.shape[0]
        return self.lookup_table_bias[:, self.ids.reshape(-1)].view(1, self.lookup_table_bias.shape[0], n, n)


class _Cross(nn.Module):
    """The cross method: a row table and a column table (``rp_rows``, ``rp_cols``), summed."""

    def __init__(self, rows: nn.Module, cols: nn.Module):
        super().__init__()
        self.rp_rows, self.rp_cols = rows, cols

    def logits(self, x: Tensor, scale: float) -> Tensor:
        return self.rp_rows.logits(x, scale) + self.rp_cols.logits(x, scale)

    def values(self, attn: Tensor) -> Tensor:
        return self.rp_rows.values(attn) + self.rp_cols.values(attn)


def _table(pe: IRPE, table: nn.Module, n: int, pos, device) -> nn.Module:
    kind = _Bias if pe.mode == "bias" else _Contextual
    if isinstance(table, IRPECrossTable):
        return _Cross(kind(table.rp_rows, *pe._index("cross_rows", n, pos, device)),
                      kind(table.rp_cols, *pe._index("cross_cols", n, pos, device)))
    return kind(table, *pe._index(pe.method, n, pos, device))


class IRPEScripted(nn.Module):
    """iRPE at one grid: the model's tables under their names (``rpe_q`` / ``rpe_k`` / ``rpe_v``, cross tables with
    ``rp_rows`` / ``rp_cols``), each with its bucket ids as buffers."""

    def __init__(self, pe: IRPE, n: int, pos, device):
        super().__init__()
        for where in "qkv":
            table = getattr(pe, f"rpe_{where}")
            setattr(self, f"rpe_{where}", None if table is None else _table(pe, table, n, pos, device))

    def bias(self, q: Tensor, k: Tensor, scale: float) -> Optional[Tensor]:
        out: Optional[Tensor] = None
        rpe_k = self.rpe_k
        if rpe_k is not None:
            out = rpe_k.logits(q, scale)
        rpe_q = self.rpe_q
        if rpe_q is not None:
            t = rpe_q.logits(k, scale).transpose(-2, -1)
            out = t if out is None else out + t
        return out

    def value(self, attn: Tensor) -> Optional[Tensor]:
        rpe_v = self.rpe_v
        if rpe_v is None:
            return None
        return rpe_v.values(attn)


def manhattan_distance(h: int, w: int, device: torch.device) -> Tensor:
    """``|Δrow| + |Δcol|`` between the tokens of a row-major ``h x w`` grid, float32 ``[h*w, h*w]``."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return ((rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()).to(torch.float32)


class DecayScripted(nn.Module):
    """RMT's Manhattan decay ``log γ_h (|Δrow| + |Δcol|)`` on the grid distances of the call (no parameters)."""

    def __init__(self, pe: ManhattanDecay):
        super().__init__()
        self.register_buffer("log_decay", pe.log_decay.clone().float(), persistent=False)

    def bias(self, dist: Tensor, npre: int) -> Tensor:
        grid = self.log_decay[:, None, None] * dist                               # [heads, hw, hw]
        return F.pad(grid, (npre, 0, npre, 0))[None]                            # [1, heads, n, n], 0 at prefix


class AttentionScripted(nn.Module):
    """The model's attention (``qkv``, ``proj``, dropouts) with one of: no encoding, iRPE, RMT decay."""

    def __init__(self, attn: nn.Module, irpe: Optional[IRPEScripted], decay: Optional[DecayScripted]):
        super().__init__()
        self.qkv, self.proj, self.attn_drop, self.proj_drop = attn.qkv, attn.proj, attn.attn_drop, attn.proj_drop
        self.num_heads, self.scale = attn.num_heads, float(attn.scale)
        self.pe, self.decay = irpe, decay
        self.on_values = irpe is not None and irpe.rpe_v is not None

    def forward(self, x: Tensor, dist: Optional[Tensor], npre: int) -> Tensor:
        b, n, c = x.shape[0], x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                                         # [b, heads, n, d]
        bias: Optional[Tensor] = None
        irpe = self.pe
        if irpe is not None:                  # the grid was checked against its bucket ids (patch_grid)
            bias = irpe.bias(q, k, self.scale)
        decay = self.decay
        if decay is not None and dist is not None:
            bias = decay.bias(dist, npre)
        if self.on_values and irpe is not None:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias.to(attn.dtype)
            attn = self.attn_drop(attn.softmax(dim=-1))
            out = attn @ v
            extra = irpe.value(attn)
            if extra is not None:
                out = out + extra.to(out.dtype)
        else:
            drop = self.attn_drop.p if self.training else 0.0
            mask: Optional[Tensor] = None if bias is None else bias.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class BlockScripted(nn.Module):
    """``zoo.nn.Block`` with the scripted attention (the block's own norms, MLP, layer scales, drop paths)."""

    def __init__(self, blk: nn.Module, attn: AttentionScripted):
        super().__init__()
        self.norm1, self.attn, self.ls1, self.drop_path1 = blk.norm1, attn, blk.ls1, blk.drop_path1
        self.norm2, self.mlp, self.ls2, self.drop_path2 = blk.norm2, blk.mlp, blk.ls2, blk.drop_path2

    def forward(self, x: Tensor, dist: Optional[Tensor], npre: int) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), dist, npre)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class PEGScripted(nn.Module):
    """CPVT's PEG (stride 1) on the token grid of each call: ``x + conv(x)`` over the grid, prefix kept."""

    def __init__(self, peg: PEG):
        super().__init__()
        self.proj = peg.proj

    def forward(self, x: Tensor, h: int, w: int, npre: int) -> Tensor:
        b, c = x.shape[0], x.shape[2]
        prefix, feat = x[:, :npre], x[:, npre:]
        feat = feat.transpose(1, 2).reshape(b, c, h, w)
        out = (self.proj(feat) + feat).flatten(2).transpose(1, 2)
        return torch.cat([prefix, out], dim=1)


class VisionTransformerScripted(nn.Module):
    """The TorchScript form of a `models.VisionTransformer` (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.embed_pe is not None or getattr(model, "pe", None) is not None:
            raise NotScriptableError(f"torch.jit.script: {type(model.embed_pe or model.pe).__name__} (pe=) has no "
                                     f"scripted form; the built-in iRPE, RMT and PEG encodings do")
        gh, gw = model.grid_size
        npre = model.num_prefix_tokens
        n = npre + gh * gw
        device = model.patch_embed.proj.weight.device
        pos = model.positions(gh, gw, device)
        blocks: List[nn.Module] = []
        for i, blk in enumerate(model.blocks):
            pe = blk.attn.pe
            irpe = IRPEScripted(pe, n, pos, device) if isinstance(pe, IRPE) else None
            decay = DecayScripted(pe) if isinstance(pe, ManhattanDecay) else None
            if pe is not None and irpe is None and decay is None:
                raise NotScriptableError(f"torch.jit.script: block {i}'s {type(pe).__name__} has no scripted form; "
                                         f"the built-in iRPE, RMT and PEG encodings do")
            blocks.append(BlockScripted(blk, AttentionScripted(blk.attn, irpe, decay)))
        after: List[int] = []
        pegs: List[nn.Module] = []
        for key, mod in model.pos_block.items():
            if not isinstance(mod, PEG) or mod.stride != 1:
                raise NotScriptableError(f"torch.jit.script: pos_block.{key} ({type(mod).__name__}) has no scripted "
                                         f"form; PEG with stride 1 does")
            after.append(int(key))
            pegs.append(PEGScripted(mod))
        self.patch_embed = model.patch_embed
        self.cls_token, self.pos_embed = model.cls_token, model.pos_embed
        self.pos_drop = model.pos_drop
        self.blocks = nn.ModuleList(blocks)
        self.has_decay = any(b.attn.decay is not None for b in blocks)
        self.pos_block = nn.ModuleList(pegs)
        self.pos_block_after: List[int] = after
        self.norm, self.head_drop, self.head = model.norm, model.head_drop, model.head
        self.patch_size: Tuple[int, int] = tuple(model.patch_size)
        self.grid_size: Tuple[int, int] = (gh, gw)
        self.in_chans = model.in_chans
        fixed = model.pos_embed is not None or any(isinstance(b.attn.pe, IRPEScripted) for b in blocks)
        self.fixed_grid: Tuple[int, int] = (gh, gw) if fixed else (-1, -1)
        self.num_prefix_tokens = npre
        self.global_pool: str = model.global_pool
        self.num_classes, self.num_features = model.num_classes, model.num_features
        self.head_hidden_size = model.num_features
        self.pretrained_cfg = self.default_cfg = getattr(model, "pretrained_cfg", None)

    def forward_features(self, x: Tensor) -> Tensor:
        h, w = patch_grid(x, self.in_chans, self.patch_size[0], self.patch_size[1], self.fixed_grid[0],
                          self.fixed_grid[1])
        x = self.patch_embed(x)
        cls_token = self.cls_token
        if cls_token is not None:
            x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos_embed = self.pos_embed
        if pos_embed is not None:
            x = x + pos_embed
        x = self.pos_drop(x)
        npre = self.num_prefix_tokens
        # RMT: the grid distances once per forward, shared by every block's decay
        dist: Optional[Tensor] = manhattan_distance(h, w, x.device) if self.has_decay else None
        for i, blk in enumerate(self.blocks):
            x = blk(x, dist, npre)
            for j, peg in enumerate(self.pos_block):
                if self.pos_block_after[j] == i:
                    x = peg(x, h, w, npre)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(pool_tokens(x, self.global_pool, self.num_prefix_tokens))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def rotate_pairs(x: Tensor, ang: Tensor) -> Tensor:
    """Rotate the interleaved channel pairs ``(x_2t, x_2t+1)`` of ``x [b, h, n, d]`` by ``ang [..., n, d/2]`` in
    float32 (as `zoo.pe.rope2d.rotate_pairs`, in plain tensor code)."""
    xf = x.float().reshape(x.shape[0], x.shape[1], x.shape[2], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    cos, sin = ang.cos(), ang.sin()
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(3).to(x.dtype)


class AxialScripted(nn.Module):
    """RoPE-Axial at the build grid: its angles ``[n, d/2]`` (prefix tokens and channels past the rotary dims at 0)
    as a buffer."""

    def __init__(self, rope: AxialRoPE2d, pos, n: int, device):
        super().__init__()
        ang, p = rope._angles(pos, n, device)
        self.register_buffer("ang", _pad_angles(ang, p, rope.head_dim // 2).clone(), persistent=False)

    def forward(self, q: Tensor, k: Tensor) -> Tuple[Tensor, Tensor]:
        return rotate_pairs(q, self.ang), rotate_pairs(k, self.ang)


class MixedScripted(nn.Module):
    """RoPE-Mixed of one layer: angles ``col * fx + row * fy`` from the learnable ``freqs[:, layer]`` at each call;
    the grid coordinates of the build grid are buffers. ``freqs`` stays the model's (``rope.freqs``)."""

    def __init__(self, owner: MixedRoPE2d, layer: int, pos, n: int, device):
        super().__init__()
        self.layer, self.head_dim = layer, owner.head_dim
        grid = pos.grid.to(device)
        self.register_buffer("rows", grid[:, 0].float().clone(), persistent=False)
        self.register_buffer("cols", grid[:, 1].float().clone(), persistent=False)
        self.prefix = int(pos.num_prefix)

    def angles(self, freqs: Tensor) -> Tensor:
        f = freqs[:, self.layer].float()                                          # [2, h, r/2]
        ang = self.cols[None, :, None] * f[0][:, None, :] + self.rows[None, :, None] * f[1][:, None, :]
        return F.pad(ang, (0, self.head_dim // 2 - ang.shape[-1], self.prefix, 0))[None]   # [1, h, n, d/2]


class _Freqs(nn.Module):
    """Holds RoPE-Mixed's learnable ``freqs`` (the model's parameter, under its key ``rope.freqs``)."""

    def __init__(self, freqs: nn.Parameter):
        super().__init__()
        self.freqs = freqs


class RoPEAttentionScripted(nn.Module):
    """The model's attention (``qkv``, ``proj``, dropouts) with a 2D RoPE on q and k, then SDPA."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.qkv, self.proj, self.attn_drop, self.proj_drop = attn.qkv, attn.proj, attn.attn_drop, attn.proj_drop
        self.num_heads = attn.num_heads

    def forward(self, x: Tensor, ang: Tensor) -> Tensor:
        b, n, c = x.shape[0], x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = rotate_pairs(qkv[0], ang), rotate_pairs(qkv[1], ang), qkv[2]
        drop = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class RoPEBlockScripted(nn.Module):
    """`rope_vit.RoPEBlock` (layer scale as ``gamma_1`` / ``gamma_2``) with the scripted attention."""

    def __init__(self, blk: nn.Module, mixed: Optional[MixedScripted]):
        super().__init__()
        self.norm1, self.attn, self.drop_path1 = blk.norm1, RoPEAttentionScripted(blk.attn), blk.drop_path1
        self.norm2, self.mlp, self.drop_path2 = blk.norm2, blk.mlp, blk.drop_path2
        self.gamma_1, self.gamma_2 = blk.gamma_1, blk.gamma_2
        self.mixed = mixed

    def forward(self, x: Tensor, ang: Optional[Tensor], freqs: Optional[Tensor]) -> Tensor:
        mixed = self.mixed
        if mixed is not None and freqs is not None:                               # RoPE-Mixed: this layer's angles
            ang = mixed.angles(freqs)
        assert ang is not None
        y = self.attn(self.norm1(x), ang)
        gamma_1 = self.gamma_1
        x = x + self.drop_path1(y if gamma_1 is None else gamma_1 * y)
        y = self.mlp(self.norm2(x))
        gamma_2 = self.gamma_2
        return x + self.drop_path2(y if gamma_2 is None else gamma_2 * y)


class RoPEVisionTransformerScripted(nn.Module):
    """The TorchScript form of a `rope_vit.RoPEVisionTransformer` (RoPE-Axial or RoPE-Mixed) at its build grid."""

    def __init__(self, model: nn.Module):
        super().__init__()
        rope = model.rope
        if not isinstance(rope, (AxialRoPE2d, MixedRoPE2d)) or model.embed_pe is not None:
            name = type(model.embed_pe or getattr(model, "pe", None)).__name__
            raise NotScriptableError(f"torch.jit.script: {name} (pe=) has no scripted form; the built-in 2D RoPEs do")
        gh, gw = model.grid_size
        npre = model.num_prefix_tokens
        n = npre + gh * gw
        device = model.patch_embed.proj.weight.device
        pos = model.positions(gh, gw, device)
        self.mixed = isinstance(rope, MixedRoPE2d)
        self.axial = None if self.mixed else AxialScripted(rope, pos, n, device)
        self.rope = _Freqs(rope.freqs) if self.mixed else None                    # rope.freqs
        self.patch_embed, self.cls_token, self.pos_drop = model.patch_embed, model.cls_token, model.pos_drop
        self.blocks = nn.ModuleList([RoPEBlockScripted(b, MixedScripted(rope, i, pos, n, device) if self.mixed
                                                       else None) for i, b in enumerate(model.blocks)])
        self.norm, self.fc_norm, self.head_drop, self.head = model.norm, model.fc_norm, model.head_drop, model.head
        self.patch_size: Tuple[int, int] = tuple(model.patch_size)
        self.grid_size: Tuple[int, int] = (gh, gw)
        self.in_chans, self.num_prefix_tokens = model.in_chans, npre
        self.global_pool: str = model.global_pool
        self.num_classes, self.num_features = model.num_classes, model.num_features
        self.head_hidden_size = model.num_features
        self.pretrained_cfg = self.default_cfg = getattr(model, "pretrained_cfg", None)

    def forward_features(self, x: Tensor) -> Tensor:
        patch_grid(x, self.in_chans, self.patch_size[0], self.patch_size[1], self.grid_size[0], self.grid_size[1])
        x = self.patch_embed(x)
        cls_token = self.cls_token
        if cls_token is not None:
            x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x)
        axial, rope = self.axial, self.rope
        ang: Optional[Tensor] = None if axial is None else axial.ang
        freqs: Optional[Tensor] = None if rope is None else rope.freqs
        for blk in self.blocks:
            x = blk(x, ang, freqs)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.fc_norm(pool_tokens(x, self.global_pool, self.num_prefix_tokens)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ---- LightNet ----------------------------------------------------------------------------------------------------

def lrpe_grid_angles(h: int, w: int, theta: Tensor, dim: int) -> Tensor:
    """MD-LRPE angles of a row-major ``h x w`` grid, float32 ``[h*w, dim]``: channels ``0..e-1`` carry
    ``row * θ_j``, ``e..2e-1`` ``col * θ_j`` (``e = ceil(dim / 2)``; as `zoo.pe.lrpe.md_lrpe_angles`)."""
    e = (dim + 1) // 2
    th = theta[:e].float()
    rows = torch.arange(h, device=theta.device, dtype=torch.float32).repeat_interleave(w)
    cols = torch.arange(w, device=theta.device, dtype=torch.float32).repeat(h)
    return torch.cat([rows[:, None] * th[None, :], cols[:, None] * th[None, :]], dim=-1)[:, :dim]


class TpeScripted(nn.Module):
    """One axis of MD-TPE (`zoo.pe.tpe.Tpe`, its own ``q``, ``k``, ``log_decay``, ``norm``, ``o_proj``) with the
    decay as one dense ``[H, L, L]`` matrix ``λ^{|t-s|}`` (causal: ``s <= t``) instead of the chunked scan."""

    def __init__(self, tpe: nn.Module, bidirectional: bool):
        super().__init__()
        self.q, self.k, self.log_decay = tpe.q, tpe.k, tpe.log_decay
        self.norm, self.o_proj = tpe.norm, tpe.o_proj                             # GroupRMSNorm, o_proj
        self.num_heads, self.bidirectional = tpe.num_heads, bidirectional

    def forward(self, x: Tensor) -> Tensor:
        b, L, c = x.shape[0], x.shape[1], x.shape[2]
        hh = self.num_heads
        xh = x.reshape(b, L, hh, c // hh)                                          # [B, L, H, Dh]
        ld = F.logsigmoid(self.log_decay).to(x.dtype)
        i = torch.arange(L, device=x.device, dtype=x.dtype)
        diff = i[:, None] - i[None, :]
        if self.bidirectional:
            mat = torch.exp(ld[:, None, None] * diff.abs())                       # [H, L, L]
        else:
            mat = torch.exp(ld[:, None, None] * diff.clamp_min(0)) * (diff >= 0).to(x.dtype)
        y = torch.einsum("hij,bjhd->bihd", mat, xh)
        gain = (self.q * self.k).reshape(hh, -1).sum(-1)                          # q_h . k_h
        y = (y * gain.to(y.dtype)[None, None, :, None]).reshape(b, L, c)
        return self.o_proj(self.norm(y))


class MdTpeScripted(nn.Module):
    """MD-TPE on an ``h x w`` grid of tokens: ``x + Tpe_0(x along the rows) + Tpe_1(x along the columns)``."""

    def __init__(self, tpe: nn.Module):
        super().__init__()
        if tpe.num_axes != 2:
            raise NotScriptableError(f"torch.jit.script: MD-TPE with {tpe.num_axes} axes has no scripted form; "
                                     f"the 2-axis one does")
        self.tpes = nn.ModuleList([TpeScripted(t, bool(tpe.bidirectional)) for t in tpe.tpes])

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, c = x.shape[0], x.shape[2]
        g = x.reshape(b, h, w, c)
        mixed = torch.zeros_like(g)
        for k, tpe in enumerate(self.tpes):
            if k == 0:                                                            # along h, within each column
                xk = g.transpose(1, 2).reshape(b * w, h, c)
                mixed = mixed + tpe(xk).reshape(b, w, h, c).transpose(1, 2)
            else:                                                                 # along w, within each row
                mixed = mixed + tpe(g.reshape(b * h, w, c)).reshape(b, h, w, c)
        return x + mixed.reshape(b, h * w, c)


class LinearAttentionScripted(nn.Module):
    """`zoo.nn.LinearAttention`, non-causal (every token visible): SiLU queries, keys softmax-normalised over the
    tokens, MD-LRPE cosine ``[x cos, x sin]`` on both when ``ang`` is given, ``q (kᵀ v)``, sigmoid output gate,
    RMSNorm, ``proj``."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.qkv, self.gate, self.norm, self.proj, self.proj_drop = (attn.qkv, attn.gate, attn.norm, attn.proj,
                                                                     attn.proj_drop)
        self.num_heads = attn.num_heads

    def forward(self, x: Tensor, cos_sin: Optional[Tuple[Tensor, Tensor]]) -> Tensor:
        b, n, c = x.shape[0], x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        qf = F.silu(q.float())
        wk = torch.softmax(k.float(), dim=-2)                                     # over the tokens, per channel
        if cos_sin is not None:
            cos, sin = cos_sin
            qf = torch.cat([qf * cos, qf * sin], dim=-1)
            wk = torch.cat([wk * cos, wk * sin], dim=-1)
        out = qf.to(v.dtype) @ (wk.to(v.dtype).transpose(-2, -1) @ v)             # [b, h, n, d]
        out = out.transpose(1, 2).reshape(b, n, c)
        gate = self.gate
        if gate is not None:
            out = out * torch.sigmoid(gate(x))
        return self.proj_drop(self.proj(self.norm(out)))


class LightNetBlockScripted(nn.Module):
    """`lightnet.LightNetBlock` with the scripted linear attention."""

    def __init__(self, blk: nn.Module):
        super().__init__()
        self.norm1, self.attn, self.drop_path1 = blk.norm1, LinearAttentionScripted(blk.attn), blk.drop_path1
        self.norm2, self.mlp, self.drop_path2 = blk.norm2, blk.mlp, blk.drop_path2

    def forward(self, x: Tensor, cos_sin: Optional[Tuple[Tensor, Tensor]]) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), cos_sin))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class LightNetScripted(nn.Module):
    """The TorchScript form of a `lightnet.LightNet`; any image size divisible by the patch size, as the model.
    The MD-LRPE angles (their cos and sin) are built once per forward for the image's grid and shared by every
    block."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from zoo.pe.lrpe import MdLrpeCosine, lrpe_theta
        pes = [b.attn.pe for b in model.blocks]
        for i, pe in enumerate(pes):
            if pe is not None and not isinstance(pe, MdLrpeCosine):
                raise NotScriptableError(f"torch.jit.script: block {i}'s {type(pe).__name__} has no scripted form; "
                                         f"MD-LRPE does")
            if pe is not None and (pe.head_dim, pe.base) != (pes[0].head_dim, pes[0].base):
                raise NotScriptableError("torch.jit.script: the scripted LightNet shares one MD-LRPE across blocks")
            if model.blocks[i].attn.causal:
                raise NotScriptableError("torch.jit.script: the causal LinearAttention has no scripted form")
        lrpe = pes[0] if pes and pes[0] is not None else None
        if lrpe is not None and any(pe is None for pe in pes):
            raise NotScriptableError("torch.jit.script: the scripted LightNet needs MD-LRPE in all blocks or none")
        device = model.patch_embed.proj.weight.device
        theta = lrpe_theta(lrpe.head_dim, lrpe.base, device) if lrpe is not None else torch.zeros(0, device=device)
        self.register_buffer("theta", theta, persistent=False)
        self.has_lrpe = lrpe is not None
        self.head_dim = model.embed_dim // model.blocks[0].attn.num_heads if len(model.blocks) else 1
        self.patch_embed = model.patch_embed
        self.tpe = MdTpeScripted(model.tpe) if model.tpe is not None else None
        self.pos_drop = model.pos_drop
        self.blocks = nn.ModuleList([LightNetBlockScripted(b) for b in model.blocks])
        self.norm, self.head_drop, self.head = model.norm, model.head_drop, model.head
        self.patch_size: Tuple[int, int] = tuple(model.patch_size)
        self.grid_size: Tuple[int, int] = tuple(model.grid_size)
        self.in_chans, self.num_prefix_tokens = model.in_chans, 0
        self.global_pool: str = model.global_pool
        self.num_classes, self.num_features = model.num_classes, model.num_features
        self.head_hidden_size = model.num_features
        self.pretrained_cfg = self.default_cfg = getattr(model, "pretrained_cfg", None)

    def forward_features(self, x: Tensor) -> Tensor:
        h, w = patch_grid(x, self.in_chans, self.patch_size[0], self.patch_size[1], -1, -1)
        x = self.patch_embed(x)                                                   # [B, h*w, D]
        tpe = self.tpe
        if tpe is not None:
            x = tpe(x, h, w)
        x = self.pos_drop(x)
        cos_sin: Optional[Tuple[Tensor, Tensor]] = None
        if self.has_lrpe:                                                         # once per forward, every block
            ang = lrpe_grid_angles(h, w, self.theta, self.head_dim)
            cos_sin = (ang.cos(), ang.sin())
        for blk in self.blocks:
            x = blk(x, cos_sin)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(pool_tokens(x, self.global_pool, 0))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def scriptable(model: nn.Module) -> nn.Module:
    """The TorchScript form of a vision classifier of the zoo (the same parameters; see the module docstring)."""
    from .models import VisionTransformer
    from .lightnet import LightNet
    from .rope_vit import RoPEVisionTransformer
    if isinstance(model, LightNet):
        return LightNetScripted(model)
    if isinstance(model, VisionTransformer):
        return VisionTransformerScripted(model)
    if isinstance(model, RoPEVisionTransformer):
        return RoPEVisionTransformerScripted(model)
    raise NotScriptableError(f"torch.jit.script: {type(model).__name__} has no scripted form (the ViT family, the "
                             f"RoPE-ViTs and LightNet have); use torch.export / ONNX / torch.fx")
