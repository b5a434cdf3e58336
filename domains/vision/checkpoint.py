"""Steps shared by the vision ``checkpoint_filter_fn``s: unwrap a saved state dict, drop the blocks of a deeper
model, fit the patch kernel (input channels, patch size) and keep the model's head when the class count differs.

Each step works on ``out`` (the checkpoint's tensors under the model's key names) against ``own`` (the model's
``state_dict()``); missing and unexpected keys are left for `zoo.load_checkpoint` to report.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.errors import CheckpointError

__all__ = ["unwrap_state_dict", "drop_blocks_beyond", "fit_patch_embed", "keep_own_head_if_mismatched",
           "resample_patch_kernel", "adapt_input_conv"]

_log = logging.getLogger(__name__)

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def unwrap_state_dict(state_dict: Any) -> dict:
    """The state dict inside ``{'model': sd}`` / ``{'state_dict': sd}`` (else ``{'model_ema': sd}``), with the
    ``module.`` prefix of a DistributedDataParallel save stripped."""
    sd = state_dict
    for key in ("model", "state_dict", "model_ema"):
        inner = sd.get(key) if isinstance(sd, dict) else None
        if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
            sd = inner
            break
    if not isinstance(sd, dict):
        raise CheckpointError(f"expected a state dict (or {{'model': state_dict}}), got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def drop_blocks_beyond(sd: Dict[str, Any], depth: int) -> Dict[str, Any]:
    """``sd`` without the ``blocks.i.*`` keys of blocks ``i >= depth`` (a deeper model's checkpoint)."""
    out: Dict[str, Any] = {}
    dropped = set()
    for k, v in sd.items():
        b = _BLOCK_KEY.match(k)
        if b and int(b.group(1)) >= depth:
            dropped.add(int(b.group(1)))
            continue
        out[k] = v
    if dropped:
        _log.info("checkpoint blocks %s dropped: the model has depth %d", sorted(dropped), depth)
    return out


def fit_patch_embed(out: Dict[str, Any], own: Dict[str, Tensor], key: str = "patch_embed.proj.weight") -> None:
    """Adapt ``out[key]`` (a ``[D, C, ph, pw]`` kernel) in place to the model's input channels, then patch size."""
    if key not in out or key not in own or getattr(out[key], "ndim", 0) != 4:
        return
    w = out[key]
    if w.shape[1] != own[key].shape[1]:
        w = adapt_input_conv(own[key].shape[1], w)
        _log.info("%s adapted from %d to %d input channels", key, out[key].shape[1], w.shape[1])
    if tuple(w.shape[-2:]) != tuple(own[key].shape[-2:]):
        _log.info("%s resampled from %s to %s", key, tuple(w.shape[-2:]), tuple(own[key].shape[-2:]))
        w = resample_patch_kernel(w, tuple(own[key].shape[-2:]))
    out[key] = w


def keep_own_head_if_mismatched(out: Dict[str, Any], own: Dict[str, Tensor], num_classes: int,
                                head_keys: Sequence[str] = ("head.weight", "head.bias")) -> None:
    """A checkpoint head of another class count is replaced in place by the model's freshly initialised one."""
    if not any(k in out for k in head_keys):
        return
    if any(k in out and (k not in own or tuple(out[k].shape) != tuple(own[k].shape)) for k in head_keys):
        _log.warning("checkpoint head %s does not fit the model's %d classes: keeping the model's freshly "
                     "initialised head", tuple(out[head_keys[0]].shape) if head_keys[0] in out else "?", num_classes)
        for k in head_keys:
            out.pop(k, None)
            if k in own:
                out[k] = own[k]


def resample_patch_kernel(weight: Tensor, new_size: Tuple[int, int], mode: str = "bicubic",
                          antialias: bool = True) -> Tensor:
    """Resize a patch-embedding kernel ``[O, I, ph, pw] -> [O, I, *new_size]`` so that it sees a resized patch
    as the old kernel saw the original one (FlexiViT, Beyer et al., 2023: pseudo-inverse of the resize map;
    the same rule as timm's ``resample_patch_embed``)."""
    old = tuple(weight.shape[-2:])
    new = tuple(int(s) for s in new_size)
    if old == new:
        return weight
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, dtype=torch.float32, device=weight.device).reshape(n_old, 1, *old)
    resized = F.interpolate(basis, size=new, mode=mode, antialias=antialias and mode in ("bilinear", "bicubic"),
                            align_corners=False if mode in ("bilinear", "bicubic") else None)  # [n_old, 1, *new]
    m = resized.reshape(n_old, -1).T                                               # [n_new, n_old] resize map
    pinv = torch.linalg.pinv(m.double()).float()                                  # [n_old, n_new]
    o, i = weight.shape[:2]
    out = weight.float().reshape(o, i, n_old) @ pinv                              # [O, I, n_new]
    return out.reshape(o, i, *new).to(weight.dtype)


def adapt_input_conv(in_chans: int, weight: Tensor) -> Tensor:
    """Adapt a first-conv kernel ``[O, I, kh, kw]`` to ``in_chans`` inputs (timm's rule: sum the channels for one
    input channel; otherwise repeat them and rescale by ``I / in_chans``)."""
    o, i = weight.shape[:2]
    if in_chans == i:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_chans / i)
        w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (i / in_chans)
    return w.to(weight.dtype)
