"""Pieces shared by the ViT-layout image models (`models`, `rope_vit`, `lightnet`).

    image [B, C, H, W] --PatchEmbed--> [B, h*w, D]      h, w = H / ph, W / pw   (`grid_for_images` checks and says)

The patch embedding keeps timm's key (``patch_embed.proj``), so checkpoints of every family load unchanged. It
also owns the geometry of a forward (the patch grid of the images and its `Positions`), which a model reaches
through `eager`: under torch.fx that step is one node run as it is, so the size checks and the position caches stay
Python (torchvision's ``create_feature_extractor`` and timm's fx helpers trace the rest of the model).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.fx
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zoo.pe.learned import to_pair
from zoo.positions import Positions

__all__ = ["PatchEmbed", "eager", "patch_geometry", "check_images", "grid_for_images", "cached_grid_positions",
           "init_linears_and_norms", "new_head"]

_POS_CACHE_SIZE = 16   # patch grids (x device) whose `Positions` a model keeps


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: ``[B, C, H, W] -> [B, (H/p)*(W/p), D]`` (key ``proj`` as in timm).

    ``grid(x)`` checks images and gives their patch grid (``fixed_size``: the only image size accepted, with
    ``fixed_note`` ending the error for any other); ``positions(h, w, device)`` the `Positions` of that grid after
    ``num_prefix`` tokens, cached per grid and device."""

    def __init__(self, patch_size: Tuple[int, int], in_chans: int, embed_dim: int,
                 fixed_size: Optional[Tuple[int, int]] = None, fixed_note: str = "", num_prefix: int = 0):
        super().__init__()
        self.patch_size, self.in_chans = patch_size, in_chans
        self.fixed_size, self.fixed_note, self.num_prefix = fixed_size, fixed_note, num_prefix
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self._pos_cache: Dict[tuple, Positions] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)                            # [B, h*w, D]

    def grid(self, x: Tensor) -> Tuple[int, int]:
        """The ``(h, w)`` patch grid of images ``x [B, in_chans, H, W]`` (`grid_for_images`)."""
        return grid_for_images(x, self.in_chans, self.patch_size, self.fixed_size, self.fixed_note)

    def positions(self, h: int, w: int, device) -> Positions:
        """The `Positions` of an ``h x w`` patch grid after the prefix tokens (cached per grid and device)."""
        return cached_grid_positions(self._pos_cache, h, w, device, self.num_prefix)

    def resized_pos_embed(self, pos_embed: Tensor, h: int, w: int, grid_size: Tuple[int, int]) -> Tensor:
        """A learned table ``[1, num_prefix + gh*gw, D]`` of the ``grid_size`` grid for an ``h x w`` grid (bicubic,
        prefix rows kept; the table itself at its own grid)."""
        from zoo.pe.learned import resample_abs_pos_embed
        if isinstance(h, torch.SymInt) or isinstance(w, torch.SymInt):     # torch.export, dynamic shapes
            return resample_abs_pos_embed(pos_embed, (h, w), grid_size, num_prefix=self.num_prefix, symbolic=True)
        if (h, w) == tuple(grid_size):
            return pos_embed
        return resample_abs_pos_embed(pos_embed, (h, w), grid_size, num_prefix=self.num_prefix)


def eager(module: nn.Module, method: str, *args: Any) -> Any:
    """``getattr(module, method)(*args)``. Wrapped for torch.fx (``torch.fx.wrap`` here and in each module that
    calls it, and timm's notrace list): a traced model records this call as one node and runs it as it is, so
    what it does in Python (image checks, the patch grid, cached positions, position hooks that loop over the
    grid) works on the real values."""
    return getattr(module, method)(*args)


torch.fx.wrap("eager")


def tie_params(x: Tensor, *params: Tensor) -> Tensor:
    """``x``, unchanged. Under torch.fx it records ``params`` as inputs of a node on the path to the output, so that
    the traced GraphModule owns parameters its leaf modules read through per-layer views (RoPE-Mixed's
    ``rope.freqs``): ``fx.parameters()`` lists them and an optimiser of the graph trains them."""
    return x


torch.fx.wrap("tie_params")


def _register_fx_leaves() -> None:
    """timm's fx helpers (``timm.models.get_notrace_modules`` / ``get_notrace_functions``, which its feature
    extraction and tests pass to torchvision's tracer) keep the attention modules whole: they branch in Python on
    shapes and `Positions` (fused kernels, chunking, caches), so a traced model calls them as they are."""
    try:
        from timm.layers import register_notrace_function, register_notrace_module
    except ImportError:                       # timm is optional outside the timm API
        return
    from zoo.nn.attention import Attention
    from zoo.nn.linear_attention import LinearAttention
    for cls in (Attention, LinearAttention):
        register_notrace_module(cls)
    register_notrace_function(eager)
    register_notrace_function(tie_params)


_register_fx_leaves()


def patch_geometry(img_size: Union[int, Tuple[int, int]], patch_size: Union[int, Tuple[int, int]]
                   ) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    """``(img_size, patch_size, grid_size)`` as int pairs; the image must tile into whole patches."""
    img, patch = to_pair(img_size, "img_size"), to_pair(patch_size, "patch_size")
    if img[0] % patch[0] or img[1] % patch[1]:
        raise ValueError(f"img_size {img[0]}x{img[1]} is not divisible by patch_size {patch[0]}x{patch[1]}")
    return img, patch, (img[0] // patch[0], img[1] // patch[1])


def check_images(x: Any, in_chans: Optional[int]) -> None:
    """Check what a model's ``forward`` received: a floating-point tensor ``[B, in_chans, H, W]`` with ``B, H, W >
    0`` (``in_chans=None``: any channel count). Errors say what was given and how to convert it."""
    c = "C" if in_chans is None else in_chans
    if not isinstance(x, Tensor):
        raise TypeError(f"expected images as a torch.Tensor [B, {c}, H, W], got {type(x).__name__}; convert with "
                        f"torch.as_tensor(...)")
    if not x.is_floating_point():
        raise TypeError(f"expected floating-point images [B, {c}, H, W] (float32 / bfloat16 / float16, normalised "
                        f"as in training), got dtype {x.dtype}; convert 8-bit pixels with x.float() / 255 before "
                        f"normalising")
    if x.ndim != 4:
        raise ValueError(f"expected images [B, {c}, H, W], got a tensor of shape {tuple(x.shape)}")
    if in_chans is not None and x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channel(s), got {x.shape[1]} (input shape {tuple(x.shape)}); "
                         f"build the model with in_chans={x.shape[1]} to change it")
    if x.shape[0] == 0:
        raise ValueError(f"empty batch: images of shape {tuple(x.shape)} hold no image")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"image size {x.shape[2]}x{x.shape[3]} is empty (input shape {tuple(x.shape)})")


def grid_for_images(x: Tensor, in_chans: int, patch_size: Tuple[int, int],
                    fixed_size: Optional[Tuple[int, int]] = None, fixed_note: str = "") -> Tuple[int, int]:
    """The ``(h, w)`` patch grid of images ``x [B, in_chans, H, W]``, with errors that say what to change.

    ``fixed_size``: the only ``(H, W)`` accepted (a model built without ``dynamic_img_size``); ``fixed_note`` ends
    the error raised for any other size."""
    check_images(x, in_chans)
    hh, ww = x.shape[2:]
    if fixed_size is not None and (hh, ww) != tuple(fixed_size):
        raise ValueError(f"expected a {fixed_size[0]}x{fixed_size[1]} image, got {hh}x{ww}; build the model with "
                         f"dynamic_img_size=True to accept other sizes, or with img_size=({hh}, {ww}) to change its "
                         f"size{fixed_note}")
    ph, pw = patch_size
    if hh % ph or ww % pw:
        raise ValueError(f"image size {hh}x{ww} is not divisible by the patch size {ph}x{pw} (each side must be a "
                         f"positive multiple of the patch size)")
    return hh // ph, ww // pw


def cached_grid_positions(cache: Dict[tuple, Positions], h: int, w: int, device,
                          num_prefix: int = 0) -> Positions:
    """`Positions.grid_2d` of an ``h x w`` patch grid after ``num_prefix`` tokens, kept in ``cache`` per grid and
    device (the cache is emptied once it holds `_POS_CACHE_SIZE` grids; not used while torch.export or
    torch.compile traces, where the sizes may be symbolic)."""
    if torch.compiler.is_compiling():                 # torch.export / compile: sizes may be symbolic, no cache
        return Positions.grid_2d(h, w, num_prefix=num_prefix, device=device)
    key = (h, w, str(device))
    pos = cache.get(key)
    if pos is None:
        with torch.inference_mode(False):                 # cached tensors must outlive an inference_mode block
            pos = Positions.grid_2d(h, w, num_prefix=num_prefix, device=device)
        if len(cache) >= _POS_CACHE_SIZE:
            cache.clear()
        cache[key] = pos
    return pos


def init_linears_and_norms(module: nn.Module, std: float = 0.02) -> None:
    """DeiT / timm init: trunc-normal ``std`` on every Linear weight, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def take_indices(n: int, indices: Optional[Union[int, List[int]]] = None) -> Tuple[List[int], int]:
    """timm's ``feature_take_indices``: ``(absolute indices, the largest)`` of ``n`` blocks for ``indices`` (None:
    all; an int k: the last k; a list: those, negative ones from the end); ValueError naming a bad one."""
    if indices is None:
        indices = n
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= n:
            raise ValueError(f"indices: the last {indices} of {n} blocks is out of range (1 to {n})")
        take = list(range(n - indices, n))
    else:
        take = []
        for i in indices:
            if not -n <= i < n:
                raise ValueError(f"indices: block {i} is out of range for {n} blocks")
            take.append(i % n)
    if not take:
        raise ValueError("indices: no block taken")
    return take, max(take)


class TimmClassifierMixin:
    """timm's classifier API on a token model of the zoo (``blocks``, ``norm``, ``head``, ``num_features``,
    ``num_prefix_tokens``, ``global_pool``): pooling (``''`` the tokens as they are, ``'token'`` the cls token,
    ``'avg'`` the mean of the patch tokens), ``reset_classifier`` keeping the model's device, dtype and train mode,
    ``head_hidden_size``, gradient checkpointing per block, ``group_matcher`` for layer-wise learning rates and
    ``no_weight_decay``.  Changing the pooling keeps the norms where the model was built with them (as timm's)."""

    grad_checkpointing = False
    POOLS = ("", "token", "avg")

    @property
    def head_hidden_size(self) -> int:
        return self.num_features

    def _check_pool(self, pool: str) -> None:
        if pool not in self.POOLS:
            raise ValueError(f"global_pool must be one of {', '.join(map(repr, self.POOLS))} for "
                             f"{type(self).__name__}, got {pool!r}")
        if pool == "token" and not self.num_prefix_tokens:
            raise ValueError(f"global_pool='token' needs a cls token; {type(self).__name__} has none (use 'avg')")

    def pool(self, x: Tensor, pool_type: Optional[str] = None) -> Tensor:
        """``[B, N, D] -> [B, D]`` (``''``: ``x`` itself)."""
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "token":
            return x[:, 0]
        if pool_type == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        return x

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script(model)`` compiles: the model's TorchScript form (`scripting.scriptable`: the
        same parameters, plain tensor code), or `zoo.errors.NotScriptableError` where there is none yet."""
        from .scripting import scriptable
        return scriptable(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (memory for compute; the same values)."""
        self.grad_checkpointing = bool(enable)

    def _grid_for(self, x: Tensor) -> Tuple[int, int]:
        return self.patch_embed.grid(x)

    def positions(self, h: int, w: int, device) -> Positions:
        """The `Positions` of an ``h x w`` patch grid after the prefix tokens (cached per grid and device)."""
        return self.patch_embed.positions(h, w, device)

    def _block(self, blk: nn.Module, x: Tensor, pos: Positions) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(blk, x, pos, use_reentrant=False)
        return blk(x, pos)

    # ---- blocks and intermediate features (a class gives ``_tokens(x) -> (tokens, positions, (h, w))``) ----------
    def _after_block(self, i: int, x: Tensor, pos: Positions) -> Tensor:
        return x

    def _prune_after(self, max_index: int) -> None:
        """Drop what belongs to the blocks after ``max_index`` besides the blocks (nothing by default)."""

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, num_prefix + h*w, D]`` (after the final norm)."""
        x, pos, _ = self._tokens(x)
        for i, blk in enumerate(self.blocks):
            x = self._after_block(i, self._block(blk, x, pos), pos)
        return self.norm(x)

    @property
    def feature_info(self) -> List[Dict[str, Any]]:
        """timm's per-block feature description (``blocks.i``: ``num_features`` channels at the patch stride)."""
        return [dict(module=f"blocks.{i}", num_chs=self.num_features, reduction=max(self.patch_size))
                for i in range(len(self.blocks))]

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's contract: the outputs of the blocks ``indices`` (None: all; an int n: the last n; a list: those,
        negative from the end) as ``[B, D, h, w]`` (``output_fmt="NCHW"``) or ``[B, h*w, D]`` (``"NLC"``), the prefix
        tokens apart (``return_prefix_tokens``: ``(patches, prefix)`` pairs), through the final norm with ``norm``;
        ``(final features, intermediates)``, or the intermediates alone (the blocks after the last one taken are
        not run then, nor with ``stop_early``)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = take_indices(len(self.blocks), indices)
        b = x.shape[0]
        x, pos, (h, w) = self._tokens(x)
        last = max_index if (stop_early or intermediates_only) else len(self.blocks) - 1
        taken = []
        for i in range(last + 1):
            x = self._after_block(i, self._block(self.blocks[i], x, pos), pos)
            if i in take:
                taken.append(self.norm(x) if norm else x)
        n = self.num_prefix_tokens
        prefix = [t[:, :n] for t in taken]
        patches = [t[:, n:] for t in taken]
        if output_fmt == "NCHW":
            patches = [t.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous() for t in patches]
        out = list(zip(patches, prefix)) if return_prefix_tokens and n else patches
        if intermediates_only:
            return out
        return self.norm(x), out

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Keep the blocks up to the last of ``indices`` (and what goes with them); ``prune_norm``: no final norm;
        ``prune_head``: no head and no pooling. Returns the absolute indices taken."""
        take, max_index = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self._prune_after(max_index)
        if prune_norm:
            self.norm = nn.Identity()
            if hasattr(self, "fc_norm"):
                self.fc_norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """timm's parameter groups (``timm.models.group_parameters``): the stem (tokens, patch embedding, position
        tables), one group per block (a block's conditional position module with it), the final norms."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed|^embed_pe|^tpe|^rope|^pe\.",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^pos_block\.(\d+)", None),
                            (r"^norm|^fc_norm", (99999,))])

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    def get_classifier(self) -> nn.Module:
        return self.head

    @torch.jit.ignore
    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head for ``num_classes`` (0: none) on the model's device and in its dtype and train mode;
        ``global_pool``: a new pooling (`POOLS`)."""
        if global_pool is not None:
            self._check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = next(iter(self.parameters()), None)
        device, dtype = (ref.device, ref.dtype) if ref is not None else (torch.device("cpu"), torch.float32)
        with device:
            head = new_head(self.num_features, num_classes)
        self.head = head.to(dtype=dtype).train(self.training)


#: ImageNet normalisation (timm's IMAGENET_DEFAULT_MEAN / _STD)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def timm_cfg(fixed_input_size: bool, crop_pct: float = 0.875, **fields: Any) -> Dict[str, Any]:
    """The timm pretrained-cfg fields a vision classifier of the zoo declares (`zoo.register_model(timm_cfg=)`):
    224 x 224 RGB, ImageNet mean / std, bicubic resize, ``crop_pct`` (0.875: the DeiT training code's eval crop,
    which the iRPE, CPVT, RMT and LightNet code keep), the stem conv and the head, and whether the model takes only
    its build size (``fixed_input_size``: a learned or rotary table fixed at build time)."""
    return dict(input_size=(3, 224, 224), crop_pct=crop_pct, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                first_conv="patch_embed.proj", classifier="head", num_classes=1000,
                fixed_input_size=fixed_input_size, **fields)


def new_head(embed_dim: int, num_classes: int) -> nn.Module:
    """A fresh classifier ``Linear(embed_dim, num_classes)`` (trunc-normal .02, zero bias); Identity for 0 classes."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(embed_dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head
