"""Vision models: ViT / DeiT with a pluggable positional encoding per block (iRPE first).

    image [B, C, H, W] --patch_embed--> [B, h*w, D] --cat cls--> [B, 1+h*w, D] (+ learned pos_embed)
        --blocks(x, Positions.grid_2d(h, w, num_prefix=1))--> norm --> cls token (or mean) --> head

Key names follow timm's ViT (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``); an encoding sits at ``blocks.i.attn.pe``.
`checkpoint_filter_fn` reads the official iRPE DeiT checkpoints (microsoft/Cream, ``{'model': sd}`` with
``blocks.i.attn.rpe_{q,k,v}.*``), DeiT/timm ViT state dicts, and adapts them to the model being built
(position table and patch kernel resampled, input channels adapted, head dropped when the class count differs,
extra blocks dropped for a shallower model).
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.fx
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from zoo.errors import CheckpointError
from zoo.nn import Block
from zoo.nn.fit import check_fit, register_family
from zoo.nn.transformer import any_spec, spec_label
from zoo.pe import build as build_pe
from zoo.pe.irpe import IRPE
from zoo.positions import Positions
from zoo.registry import PretrainedCfg, register_model

from .checkpoint import (adapt_input_conv, drop_blocks_beyond, fit_patch_embed, keep_own_head_if_mismatched,
                         resample_patch_kernel, unwrap_state_dict)
from .layers import (IMAGENET_MEAN, IMAGENET_STD, PatchEmbed, TimmClassifierMixin, eager, init_linears_and_norms,
                     new_head, patch_geometry, timm_cfg)

torch.fx.wrap("eager")   # one node of a traced model (see layers.eager)

# PatchEmbed (.layers), resample_patch_kernel and adapt_input_conv (.checkpoint) are re-exported
__all__ = ["VisionTransformer", "PatchEmbed", "IRPEFactory", "checkpoint_filter_fn", "resample_patch_kernel",
           "adapt_input_conv"]

_log = logging.getLogger(__name__)

#: the timm pretrained-cfg fields of the DeiT-style ViTs (fixed size: a learned position table)
VIT_TIMM = timm_cfg(True)
IRPE_PAPER = "https://arxiv.org/abs/2107.14222"
IRPE_ZOO_URL = "https://github.com/wkcn/iRPE-model-zoo/releases/download/1.0/"
_APE_CACHE_SIZE = 8   # image sizes whose resampled position table is kept (eval only)


# ---- encoding factory -------------------------------------------------------------------------------------------

class IRPEFactory:
    """``pe_factory`` building the same `IRPE` in every block: ``factory(layer_index, head_dim, num_heads)``."""

    def __init__(self, method: str = "product", mode: str = "contextual", ratio: float = 1.9,
                 shared_head: bool = True, skip: int = 1, rpe_on: str = "k"):
        self.config = dict(kind="irpe", method=method, mode=mode, ratio=ratio, shared_head=shared_head, skip=skip,
                           rpe_on=rpe_on)

    def __call__(self, layer_index: int, head_dim: int, num_heads: int) -> IRPE:
        kw = {k: v for k, v in self.config.items() if k != "kind"}
        return IRPE(head_dim, num_heads, **kw)

    def __repr__(self) -> str:
        return "IRPEFactory(" + ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "kind") + ")"


# ---- model ------------------------------------------------------------------------------------------------------

class VisionTransformer(TimmClassifierMixin, nn.Module):
    """ViT / DeiT (Dosovitskiy et al., 2021; Touvron et al., 2021) whose attention takes a positional encoding.

    Args:
        img_size: training image size, int or (H, W).
        patch_size: int or (ph, pw).
        in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: as in timm.
        class_token: prepend a cls token (the iRPE prefix bucket serves it).
        global_pool: "token" (cls token) or "avg" (mean of patch tokens).
        drop_rate, attn_drop_rate, drop_path_rate: dropout, attention dropout, stochastic depth (linear rule).
        norm_eps: LayerNorm epsilon (1e-6 as DeiT).
        ape: keep a learned absolute position table ``pos_embed [1, num_prefix + h*w, D]`` (DeiT-iRPE keeps it).
        pe_factory: ``callable(layer_index, head_dim, num_heads) -> PositionalEncoding | None`` for each block.
        dynamic_img_size: accept other image sizes (the position table is resampled per size).
        pe: any 2D encoding of `zoo.pe` instead of ``pe_factory`` / ``pos_block_factory``: a registered name or
            ``{"name": ..., **kwargs}``, built for this geometry (``dim``, ``head_dim``, ``num_heads``, ``depth``,
            ``grid_size``, ``max_len`` = tokens).  Attention encodings: one per block (``blocks.i.attn.pe``), or,
            when the encoding holds every layer (it has ``layer(i)``, e.g. RoPE-Mixed), one module ``pe`` whose
            ``layer(i)`` goes to block ``i``; embedding-only encodings (sin-cos / learned 2D tables, PEG, MD-TPE)
            are added to the tokens after ``pos_embed`` (``embed_pe``).  Other positions kinds raise
            `zoo.nn.fit.PEFitError` naming both kinds.  The learned ``pos_embed`` stays unless ``ape=False``.
    """

    pe_positions: Tuple[str, ...] = ("2d",)     # the positions kinds this model gives its encodings

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: Union[int, Tuple[int, int]] = 16,
                 in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, class_token: bool = True,
                 global_pool: str = "token", drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-6, ape: bool = True,
                 pe_factory: Optional[Callable[[int, int, int], Optional[nn.Module]]] = None,
                 dynamic_img_size: bool = False,
                 pos_block_factory: Optional[Callable[[int], nn.Module]] = None,
                 pos_block_after: Tuple[int, ...] = (0,), pe: Union[None, str, Mapping[str, Any]] = None):
        super().__init__()
        self.config: Dict[str, Any] = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            class_token=class_token, global_pool=global_pool, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate, norm_eps=norm_eps, ape=ape,
            pe_factory=None if pe_factory is None else getattr(pe_factory, "config", repr(pe_factory)),
            dynamic_img_size=dynamic_img_size,
            pos_block_factory=None if pos_block_factory is None else getattr(pos_block_factory, "config",
                                                                              repr(pos_block_factory)),
            pos_block_after=tuple(pos_block_after), pe=spec_label(pe) and any_spec(pe))
        if pe is not None and (pe_factory is not None or pos_block_factory is not None):
            raise ValueError("pe= replaces the model's encoding: give it without pe_factory / pos_block_factory")
        if global_pool not in self.POOLS:
            raise ValueError(f"global_pool must be 'token', 'avg' or '' (no pooling), got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg'")
        if in_chans <= 0 or depth < 0 or num_classes < 0:
            raise ValueError(f"in_chans must be > 0, depth and num_classes >= 0; got in_chans={in_chans}, "
                             f"depth={depth}, num_classes={num_classes}")
        self.img_size, self.patch_size, self.grid_size = patch_geometry(img_size, patch_size)
        self.in_chans, self.num_classes, self.global_pool = in_chans, num_classes, global_pool
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.dynamic_img_size = dynamic_img_size

        self.patch_embed = PatchEmbed(self.patch_size, in_chans, embed_dim,
                                      None if dynamic_img_size else self.img_size,
                                      " (pretrained position tables are resampled on load)", self.num_prefix_tokens)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        num_tokens = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim)) if ape else None
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist() if depth else []
        head_dim = embed_dim // num_heads
        self.embed_pe: Optional[nn.Module] = None
        if pe is not None:
            pe_factory = self._pe_factory(pe, num_tokens, depth, num_heads)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], norm_eps=norm_eps,
                  pe=pe_factory(i, head_dim, num_heads) if pe_factory is not None else None)
            for i in range(depth)])
        # encodings applied to the token stream between blocks (PEG after the first block, as CPVT):
        # keys pos_block.<i>.* where i is the block they follow
        self.pos_block = nn.ModuleDict()
        if pos_block_factory is not None:
            for i in pos_block_after:
                if not 0 <= i < depth:
                    raise ValueError(f"pos_block_after {i} is outside the {depth} blocks")
                self.pos_block[str(i)] = pos_block_factory(embed_dim)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self._ape_cache: Dict[tuple, Tensor] = {}      # eval-time resampled pos_embed per (h, w, device, dtype)
        self._ape_version: Optional[tuple] = None      # the pos_embed (storage, version) those entries came from
        self.init_weights()

    def _pe_factory(self, spec, num_tokens: int, depth: int, num_heads: int):
        """Check ``spec`` against the model (2D positions) and return a ``pe_factory`` for the blocks; an
        embedding-only encoding becomes ``embed_pe`` (the factory then gives None)."""
        meta = check_fit(spec, model=type(self).__name__, positions=self.pe_positions, causal=False)
        if "num_prefix" in meta.accepts:                                          # tables with prefix rows
            spec = {"num_prefix": self.num_prefix_tokens, **any_spec(spec)}
        geometry = dict(dim=self.embed_dim, head_dim=self.embed_dim // num_heads, num_heads=num_heads, causal=False,
                        max_len=num_tokens, depth=depth, grid_size=self.grid_size)
        first = build_pe(spec, **geometry)
        if not (first.has_rotate or first.has_bias or first.needs_weights):
            self.embed_pe = first                                                 # tokens only
            return None
        if hasattr(first, "layer"):                                               # one module, a view per layer
            self.pe = first
            return lambda i, head_dim, heads: first.layer(i)
        return lambda i, head_dim, heads: first if i == 0 else build_pe(spec, **geometry)

    # ---- init (DeiT / timm 0.3.2: trunc-normal .02 on linears, cls and pos tables; iRPE tables stay zero) ----
    def init_weights(self) -> None:
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_linears_and_norms(self)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # as the official DeiT-iRPE recipe (timm optimizer): the iRPE tables are weight-decayed
        return {n for n in ("pos_embed", "cls_token") if getattr(self, n) is not None}

    def train(self, mode: bool = True):
        self._ape_cache.clear()
        return super().train(mode)

    # ---- geometry ---------------------------------------------------------------------------------------------
    def _pos_embed_for(self, h: int, w: int) -> Tensor:
        pe = self.pos_embed
        if isinstance(h, torch.SymInt) or isinstance(w, torch.SymInt):     # torch.export, dynamic shapes
            return self.patch_embed.resized_pos_embed(pe, h, w, self.grid_size)
        if (h, w) == self.grid_size:
            return pe
        from zoo.pe.learned import resample_abs_pos_embed
        cacheable = not self.training and not (torch.is_grad_enabled() and pe.requires_grad)
        if not cacheable:
            return resample_abs_pos_embed(pe, (h, w), self.grid_size, num_prefix=self.num_prefix_tokens)
        version = (pe.data_ptr(), pe._version)
        if version != self._ape_version:      # the table was loaded or trained since: every entry is stale
            self._ape_cache.clear()
            self._ape_version = version
        key = (h, w, pe.device, pe.dtype)
        out = self._ape_cache.get(key)
        if out is None:
            with torch.inference_mode(False), torch.no_grad():
                out = resample_abs_pos_embed(pe, (h, w), self.grid_size, num_prefix=self.num_prefix_tokens)
            if len(self._ape_cache) >= _APE_CACHE_SIZE:
                self._ape_cache.pop(next(iter(self._ape_cache)))                  # oldest size out
            self._ape_cache[key] = out
        return out

    # ---- forward ----------------------------------------------------------------------------------------------
    def _tokens(self, x: Tensor) -> Tuple[Tensor, Positions, Tuple[int, int]]:
        """``[B, C, H, W]`` -> the tokens entering block 0 ``[B, num_prefix + h*w, D]``, their `Positions` and the
        patch grid (`TimmClassifierMixin.forward_features` runs the blocks)."""
        h, w = eager(self.patch_embed, "grid", x)
        x = self.patch_embed(x)                                                   # [B, h*w, D]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1+h*w, D]
        if self.pos_embed is not None:            # traced: no eval cache (h, w are values of the graph)
            x = x + (eager(self.patch_embed, "resized_pos_embed", self.pos_embed, h, w, self.grid_size)
                     if is_fx_symbolic_tracing() else self._pos_embed_for(h, w))
        pos = eager(self.patch_embed, "positions", h, w, x.device)
        if self.embed_pe is not None:
            x = eager(self.embed_pe, "embed", x, pos)
        return self.pos_drop(x), pos, (h, w)

    def _after_block(self, i: int, x: Tensor, pos: Positions) -> Tensor:
        """CPVT's PEG after the blocks named in ``pos_block_after``."""
        return eager(self.pos_block[str(i)], "embed", x, pos) if str(i) in self.pos_block else x

    def _prune_after(self, max_index: int) -> None:
        for key in [k for k in self.pos_block if int(k) > max_index]:
            del self.pos_block[key]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


register_family("ViT", positions=VisionTransformer.pe_positions, causal=False,
                models="vit_irpe_*, vit_ape_*, vit_rmt_*, cpvt_*",
                note="attention hooks: one encoding per block (or one module with a view per layer); embed hooks "
                     "on the tokens after the learned table")


# ---- checkpoint conversion --------------------------------------------------------------------------------------

_OFFICIAL_RPE_KEY = re.compile(r"^(blocks\.\d+\.attn\.)(rpe_[qkv]\..+)$")


def checkpoint_filter_fn(state_dict: dict, model: VisionTransformer) -> dict:
    """Convert an official iRPE DeiT / DeiT / timm ViT state dict to ``model``'s layout and geometry.

    - ``{'model': sd}`` / ``{'state_dict': sd}`` (else ``{'model_ema': sd}``) are unwrapped, ``module.`` stripped;
    - official ``blocks.i.attn.rpe_{q,k,v}.*`` -> ``blocks.i.attn.pe.rpe_{q,k,v}.*``;
    - blocks beyond the model's depth are dropped;
    - ``pos_embed`` is resampled to the model's grid (bicubic, prefix tokens kept);
    - ``patch_embed.proj.weight`` is adapted to ``in_chans`` and resampled to the patch size;
    - a head of another class count is replaced by the model's freshly initialised one (warning);
    - iRPE tables other than the model's (another method, ratio, mode, head sharing or placement: a cross
      checkpoint into a product model, a ratio-20 table into a ratio-1.9 model, q/k/v tables into a k model)
      raise `CheckpointError` naming the first differing table key and both shapes.
    Missing and unexpected keys are left for `zoo.load_checkpoint` to report.
    """
    sd = unwrap_state_dict(state_dict)
    own = model.state_dict()
    out: Dict[str, Any] = {}
    for k, v in sd.items():
        m = _OFFICIAL_RPE_KEY.match(k)
        out[m.group(1) + "pe." + m.group(2) if m else k] = v
    out = drop_blocks_beyond(out, len(model.blocks))

    # absolute position table
    if "pos_embed" in out:
        if getattr(model, "pos_embed", None) is None:
            _log.warning("checkpoint pos_embed dropped: the model was built with ape=False")
            del out["pos_embed"]
        elif tuple(out["pos_embed"].shape) != tuple(own["pos_embed"].shape):
            pe = out["pos_embed"]
            npre = model.num_prefix_tokens
            if pe.ndim != 3 or pe.shape[-1] != own["pos_embed"].shape[-1]:
                raise CheckpointError(f"pos_embed: checkpoint {tuple(pe.shape)} vs model "
                                      f"{tuple(own['pos_embed'].shape)}: the embedding width differs")
            ngrid = pe.shape[1] - npre
            side = math.isqrt(max(ngrid, 0))
            if ngrid <= 0 or side * side != ngrid:
                raise CheckpointError(
                    f"pos_embed: checkpoint {tuple(pe.shape)} holds {ngrid} grid tokens after {npre} prefix "
                    f"token(s), not a square grid, and cannot be resampled to the model's "
                    f"{model.grid_size[0]}x{model.grid_size[1]} grid {tuple(own['pos_embed'].shape)}")
            from zoo.pe.learned import resample_abs_pos_embed
            out["pos_embed"] = resample_abs_pos_embed(pe, model.grid_size, (side, side), num_prefix=npre)
            _log.info("pos_embed resampled from %dx%d to %dx%d", side, side, *model.grid_size)

    fit_patch_embed(out, own)                                 # input channels, then kernel size
    keep_own_head_if_mismatched(out, own, model.num_classes)

    _check_irpe_tables(out, own, model)
    return out


_IRPE_TABLE_KEY = re.compile(
    r"^blocks\.\d+\.attn\.pe\.rpe_([qkv])\.(?:(rp_rows|rp_cols)\.)?lookup_table_(weight|bias)$")


def _describe_tables(tables: Dict[str, tuple]) -> str:
    """What a set of iRPE table keys says about the encoding that made them (bucket count, not method: 82
    buckets is product at ratio 2 or euclidean/quant at ratio 20)."""
    found = [(_IRPE_TABLE_KEY.match(k), shape) for k, shape in tables.items()]
    on = "".join(c for c in "qkv" if any(m.group(1) == c for m, _ in found))
    cross = any(m.group(2) for m, _ in found)
    mode = "bias" if any(m.group(3) == "bias" for m, _ in found) else "contextual"
    m, shape = found[0]
    nb = shape[-1] if (mode == "bias" or m.group(1) != "v") else shape[-2]
    heads = "shared" if shape[0] == 1 else f"{shape[0]} heads"
    return (f"rpe_on={on!r}, {'cross (rp_rows + rp_cols)' if cross else 'one table'} per place, {mode}, "
            f"{heads}, {nb} buckets")


def _check_irpe_tables(out: dict, own: dict, model: nn.Module) -> None:
    """The checkpoint's iRPE tables must be the model's, key for key and shape for shape; otherwise say which
    table differs and how, instead of a generic missing/unexpected-keys error."""
    ck = {k: tuple(v.shape) for k, v in out.items() if _IRPE_TABLE_KEY.match(k) and hasattr(v, "shape")}
    mine = {k: tuple(v.shape) for k, v in own.items() if _IRPE_TABLE_KEY.match(k)}
    if not ck or ck == mine:
        return
    pe = next((m for m in model.modules() if isinstance(m, IRPE)), None)
    model_desc = (f"model: method={pe.method}, mode={pe.mode}, ratio={pe.ratio}, shared_head={pe.shared_head}, "
                  f"skip={pe.skip}, rpe_on={pe.rpe_on!r}, {pe.num_buckets} buckets") if pe is not None \
        else "model: no iRPE"
    hint = ("the checkpoint was trained with another iRPE method, ratio, mode, head sharing or placement; build "
            "the model with the checkpoint's settings, e.g. irpe=dict(method=..., ratio=..., rpe_on=...), or "
            "pick the matching entrypoint")
    for k, shape in ck.items():
        if k in mine and shape != mine[k]:
            raise CheckpointError(f"iRPE table {k}: checkpoint shape {shape} vs model shape {mine[k]} "
                                  f"({model_desc}; checkpoint: {_describe_tables(ck)}); {hint}")
    extra = sorted(set(ck) - set(mine), key=_natural)
    lacking = sorted(set(mine) - set(ck), key=_natural)
    parts = []
    if extra:
        parts.append(f"the checkpoint has {extra[0]} {ck[extra[0]]}"
                     + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "") + " which the model lacks")
    if lacking:
        parts.append(f"the model expects {lacking[0]} {mine[lacking[0]]}"
                     + (f" (+{len(lacking) - 1} more)" if len(lacking) > 1 else "") + " which the checkpoint lacks")
    raise CheckpointError(f"iRPE tables differ: {'; '.join(parts)} ({model_desc}; checkpoint: "
                          f"{_describe_tables(ck)}); {hint}")


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


# ---- builders ---------------------------------------------------------------------------------------------------

_IRPE_DEFAULTS = dict(method="product", mode="contextual", ratio=1.9, shared_head=True, rpe_on="k")


def _create_vit(variant_kwargs: dict, irpe: Optional[dict] = None, **kwargs) -> VisionTransformer:
    args = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, mlp_ratio=4.0, qkv_bias=True,
                norm_eps=1e-6, ape=True)
    args.update(variant_kwargs)
    args.update(kwargs)
    if irpe is not None and args.get("pe") is None:                      # pe= swaps the preset's encoding
        cfg = dict(_IRPE_DEFAULTS)
        cfg.update(irpe)
        cfg.setdefault("skip", 1 if args.get("class_token", True) else 0)
        args.setdefault("pe_factory", IRPEFactory(**cfg))
    return VisionTransformer(**args)


def _create_vit_irpe(variant_kwargs: dict, irpe_kwargs: Optional[dict] = None, **kwargs) -> VisionTransformer:
    """DeiT with iRPE. ``irpe_kwargs`` is the variant's encoding; the caller's
    ``irpe=dict(method=, mode=, ratio=, shared_head=, skip=, rpe_on=)`` overrides any of it."""
    if kwargs.get("pe") is not None and kwargs.get("irpe"):
        raise ValueError("irpe= configures the iRPE that pe= replaces: give one of them")
    irpe = dict(irpe_kwargs or {})
    irpe.update(kwargs.pop("irpe", None) or {})
    return _create_vit(variant_kwargs, irpe=irpe, **kwargs)


def _irpe_cfg(name: str, top1: float) -> Dict[str, PretrainedCfg]:
    return {"in1k": PretrainedCfg(
        url=f"{IRPE_ZOO_URL}{name}.pth", sha256=None,
        license="MIT", paper=IRPE_PAPER, source="microsoft/Cream iRPE", num_classes=1000, input_size=(3, 224, 224),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, notes=f"official checkpoint {name}", metrics={"top1": top1})}


def _deit_cfg(url: str, top1: float) -> Dict[str, PretrainedCfg]:
    return {"in1k": PretrainedCfg(
        url=url, license="Apache-2.0", paper="https://arxiv.org/abs/2012.12877", source="facebookresearch/deit",
        num_classes=1000, input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, metrics={"top1": top1})}


@register_model(cfgs=_irpe_cfg("deit_tiny_patch16_224_ctx_product_50_shared_k", 73.7),
                filter_fn=checkpoint_filter_fn, paper=IRPE_PAPER, timm_cfg=VIT_TIMM)
def vit_irpe_tiny(**kwargs) -> VisionTransformer:
    """DeiT-Tiny/16 with contextual product iRPE on keys (ratio 1.9, 50 shared buckets), learned APE kept."""
    return _create_vit_irpe(dict(embed_dim=192, depth=12, num_heads=3), **kwargs)


@register_model(cfgs=_irpe_cfg("deit_small_patch16_224_ctx_product_50_shared_k", 80.9),
                filter_fn=checkpoint_filter_fn, paper=IRPE_PAPER, timm_cfg=VIT_TIMM)
def vit_irpe_small(**kwargs) -> VisionTransformer:
    """DeiT-Small/16 with contextual product iRPE on keys (ratio 1.9, 50 shared buckets), learned APE kept."""
    return _create_vit_irpe(dict(embed_dim=384, depth=12, num_heads=6), **kwargs)


@register_model(cfgs=_irpe_cfg("deit_base_patch16_224_ctx_product_50_shared_k", 82.3),
                filter_fn=checkpoint_filter_fn, paper=IRPE_PAPER, timm_cfg=VIT_TIMM)
def vit_irpe_base(**kwargs) -> VisionTransformer:
    """DeiT-Base/16 with contextual product iRPE on keys (ratio 1.9, 50 shared buckets), learned APE kept."""
    return _create_vit_irpe(dict(embed_dim=768, depth=12, num_heads=12), **kwargs)


@register_model(cfgs=_irpe_cfg("deit_small_patch16_224_ctx_product_50_shared_qk", 81.0),
                filter_fn=checkpoint_filter_fn, paper=IRPE_PAPER, timm_cfg=VIT_TIMM)
def vit_irpe_small_qk(**kwargs) -> VisionTransformer:
    """DeiT-Small/16 with contextual product iRPE on queries and keys (ratio 1.9, 50 shared buckets)."""
    return _create_vit_irpe(dict(embed_dim=384, depth=12, num_heads=6), dict(rpe_on="qk"), **kwargs)


@register_model(cfgs=_irpe_cfg("deit_small_patch16_224_ctx_product_50_shared_qkv", 81.2),
                filter_fn=checkpoint_filter_fn, paper=IRPE_PAPER, timm_cfg=VIT_TIMM)
def vit_irpe_small_qkv(**kwargs) -> VisionTransformer:
    """DeiT-Small/16 with contextual product iRPE on queries, keys and values (ratio 1.9, 50 shared buckets)."""
    return _create_vit_irpe(dict(embed_dim=384, depth=12, num_heads=6), dict(rpe_on="qkv"), **kwargs)


@register_model(cfgs=_irpe_cfg("deit_base_patch16_224_ctx_product_50_shared_qkv", 82.8),
                filter_fn=checkpoint_filter_fn, paper=IRPE_PAPER, timm_cfg=VIT_TIMM)
def vit_irpe_base_qkv(**kwargs) -> VisionTransformer:
    """DeiT-Base/16 with contextual product iRPE on queries, keys and values (ratio 1.9, 50 shared buckets)."""
    return _create_vit_irpe(dict(embed_dim=768, depth=12, num_heads=12), dict(rpe_on="qkv"), **kwargs)


# the paper's other methods on keys (official configs deit_small_patch16_224_ctx_{euc_20,quant_51,cross_56}_shared_k,
# whose weights were not released): the number in the official name counts the buckets used at 14x14 + cls

@register_model(filter_fn=checkpoint_filter_fn, paper=IRPE_PAPER, timm_cfg=VIT_TIMM)
def vit_irpe_small_euc(**kwargs) -> VisionTransformer:
    """DeiT-Small/16 with contextual euclidean iRPE on keys (ratio 20: 82 shared buckets, 20 used at 224)."""
    return _create_vit_irpe(dict(embed_dim=384, depth=12, num_heads=6), dict(method="euclidean", ratio=20), **kwargs)


@register_model(filter_fn=checkpoint_filter_fn, paper=IRPE_PAPER, timm_cfg=VIT_TIMM)
def vit_irpe_small_quant(**kwargs) -> VisionTransformer:
    """DeiT-Small/16 with contextual quantization iRPE on keys (ratio 33: 134 shared buckets, 51 used at 224)."""
    return _create_vit_irpe(dict(embed_dim=384, depth=12, num_heads=6), dict(method="quant", ratio=33), **kwargs)


@register_model(filter_fn=checkpoint_filter_fn, paper=IRPE_PAPER, timm_cfg=VIT_TIMM)
def vit_irpe_small_cross(**kwargs) -> VisionTransformer:
    """DeiT-Small/16 with contextual cross iRPE on keys (ratio 20: rows + cols tables of 82 shared buckets)."""
    return _create_vit_irpe(dict(embed_dim=384, depth=12, num_heads=6), dict(method="cross", ratio=20), **kwargs)


@register_model(cfgs=_deit_cfg("https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth", 72.2),
                filter_fn=checkpoint_filter_fn, paper="https://arxiv.org/abs/2012.12877", timm_cfg=VIT_TIMM)
def vit_ape_tiny(**kwargs) -> VisionTransformer:
    """DeiT-Tiny/16 with a learned absolute position table only (the iRPE paper's baseline)."""
    return _create_vit(dict(embed_dim=192, depth=12, num_heads=3), **kwargs)


@register_model(cfgs=_deit_cfg("https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth", 79.8),
                filter_fn=checkpoint_filter_fn, paper="https://arxiv.org/abs/2012.12877", timm_cfg=VIT_TIMM)
def vit_ape_small(**kwargs) -> VisionTransformer:
    """DeiT-Small/16 with a learned absolute position table only (the iRPE paper's baseline)."""
    return _create_vit(dict(embed_dim=384, depth=12, num_heads=6), **kwargs)
