"""V2PE, variable visual position encoding: Ge et al., "V2PE: Improving Multimodal Long-Context Capability of
Vision-Language Models with Variable Visual Position Encoding", 2024 (arXiv 2412.09616); official OpenGVLab/V2PE
@f96f189 ``get_rope_pos_id`` (eval: ``modeling_internvl_chat.py``; train: ``internvl_chat_finetune.py``).

V2PE is a *position producer*: text tokens advance the position by 1, visual tokens by a fraction
``delta = stride / num_image_token`` (256 patch tokens per tile; an image is several tiles incl. the thumbnail), and
the positions feed ordinary RoPE at float positions (angles in float32)::

    text   : last + 1, last + 2, ...      (counting real tokens; padding tokens get position 1)
    image  : last + delta * k, k = 1 .. num_image_token * num_tiles            (float32)
    after  : last = ceil(last visual position); the next text token (``</img>``) is last + 1
    e.g. stride 16, 3 tiles:  <img> @ 3  ->  visuals 3.0625, 3.125, ..., 51.0  ->  </img> @ 52

``stride`` per image: fixed at evaluation (``v2pe_fix``, e.g. 64), drawn per image from {1, 2, 4, ..., 256} during
training (``v2pe_rnd``); stride 256 (delta 1) gives the ordinary positions ``cumsum(mask) - 1``.

Our input is the token kind, not token ids: ``visual [b, n]`` is True (or an image index >= 0) for the image patch
tokens and False (or -1) for every text token, including ``<img>`` / ``</img>``.  Each maximal run of visual tokens
(or of one image index) is one image.  As in the official code, visual tokens ignore the padding mask, and ``last``
before an image is the position of the token just before it (the official ``rope_pos_id_pre[-1]``).  Batches are
handled row by row (the official code asserts batch 1).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..positions import Positions
from .rope import RoPE
from .registry import register_pe

__all__ = ["V2PE_STRIDES", "v2pe_image_runs", "v2pe_position_ids", "V2PE"]

#: strides drawn per image in training (``random.choice([1, 2, 4, 8, 16, 32, 64, 128, 256])``)
V2PE_STRIDES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Stride = Union[int, float, str, Sequence, Tensor]


def _as_visual(visual: Tensor) -> Tensor:
    if not isinstance(visual, Tensor) or visual.ndim not in (1, 2):
        raise ValueError(f"visual must be a [b, n] or [n] bool / image-index tensor, got "
                         f"{tuple(visual.shape) if isinstance(visual, Tensor) else type(visual).__name__}")
    if visual.is_floating_point():
        raise ValueError(f"visual must be bool or int (image index, -1 for text), got {visual.dtype}")
    return visual[None] if visual.ndim == 1 else visual


def v2pe_image_runs(visual_row: Tensor) -> List[Tuple[int, int]]:
    """``(start, end)`` (end exclusive) of every image in one row ``[n]``: maximal runs of visual tokens, split where
    an int image index changes."""
    v = visual_row
    if v.dtype == torch.bool:
        ids = torch.where(v, torch.zeros_like(v, dtype=torch.long), torch.full_like(v, -1, dtype=torch.long))
    else:
        ids = v.long()
    is_vis = ids >= 0
    n = ids.shape[0]
    if n == 0:
        return []
    starts = is_vis.clone()
    starts[1:] = is_vis[1:] & ((ids[1:] != ids[:-1]) | ~is_vis[:-1])
    s = torch.nonzero(starts).flatten().tolist()
    ends = is_vis.clone()
    ends[:-1] = is_vis[:-1] & ((ids[:-1] != ids[1:]) | ~is_vis[1:])
    e = (torch.nonzero(ends).flatten() + 1).tolist()
    return list(zip(s, e))


def _strides_for(stride: Stride, num_images: int, row: int, generator: Optional[torch.Generator],
                 choices: Sequence[int]) -> List[float]:
    if isinstance(stride, str):
        if stride != "random":
            raise ValueError(f"stride must be a number, 'random', or per-image strides, got {stride!r}")
        if not choices:
            raise ValueError("choices must be a non-empty sequence of strides")
        idx = torch.randint(len(choices), (num_images,), generator=generator).tolist()
        return [float(choices[i]) for i in idx]
    if isinstance(stride, (int, float)) and not isinstance(stride, bool):
        out = [float(stride)] * num_images
    else:
        if isinstance(stride, Tensor):
            stride = stride.tolist()
        rows = list(stride)
        if rows and isinstance(rows[0], (list, tuple)):
            if row >= len(rows):
                raise ValueError(f"stride gives per-image strides for {len(rows)} rows, the batch has more")
            rows = list(rows[row])
        if len(rows) != num_images:
            raise ValueError(f"stride gives {len(rows)} per-image strides but row {row} has {num_images} images")
        out = [float(s) for s in rows]
    for s in out:
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"stride must be positive and finite, got {s}")
    return out


def v2pe_position_ids(visual: Tensor, mask: Optional[Tensor] = None, stride: Stride = 64,
                      num_image_token: int = 256, generator: Optional[torch.Generator] = None,
                      choices: Sequence[int] = V2PE_STRIDES, return_strides: bool = False):
    """V2PE positions of interleaved text and image-patch tokens (module docstring).

    Args:
        visual: ``[b, n]`` (or ``[n]``) bool, or int image index (>= 0) with -1 for text tokens.
        mask: ``[b, n]`` True/1 for real tokens; padding text tokens get position 1 (official).  Default: all real.
        stride: the visual stride of every image (``v2pe_fix``; 256 = ordinary positions), ``"random"`` to draw one
            per image from ``choices`` with ``generator`` (``v2pe_rnd``, training), or per-image strides (a list for
            one row / a list of lists per row).
        num_image_token: patch tokens per tile (256); ``delta = stride / num_image_token``.
        return_strides: also return the stride used for every image (a list per row).

    Returns:
        float32 ``[b, n]`` (``[n]`` for a 1-D ``visual``), and the strides when asked.
    """
    one_row = isinstance(visual, Tensor) and visual.ndim == 1
    vis = _as_visual(visual)
    b, n = vis.shape
    if isinstance(num_image_token, bool) or not isinstance(num_image_token, int) or num_image_token <= 0:
        raise ValueError(f"num_image_token must be a positive int, got {num_image_token!r}")
    if mask is None:
        real = torch.ones(b, n, dtype=torch.bool, device=vis.device)
    else:
        if not isinstance(mask, Tensor) or mask.shape[-1] != n or mask.ndim not in (1, 2):
            raise ValueError(f"mask must be [b, n] matching visual {tuple(vis.shape)}, got "
                             f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
        real = (mask[None] if mask.ndim == 1 else mask).to(device=vis.device).bool().expand(b, n)
    is_vis = vis >= 0 if vis.dtype != torch.bool else vis
    out = torch.empty(b, n, dtype=torch.float64, device=vis.device)
    used: List[List[float]] = []
    for r in range(b):
        runs = v2pe_image_runs(vis[r])
        strides = _strides_for(stride, len(runs), r, generator, choices)
        used.append(strides)
        last, start = -1.0, 0                                 # position of the latest token (an integer value)
        for (s, e), st in zip(runs + [(n, n)], strides + [0.0]):
            if s > start:                                     # text tokens start..s-1: count real ones only
                m = real[r, start:s]
                p = m.double().cumsum(0) - 1.0 + (last + 1.0)
                p = torch.where(m, p, torch.ones_like(p))     # padding: 1
                out[r, start:s] = p
                last = float(p[-1])
            if e > s:                                         # one image: last + delta * k, then ceil
                k = torch.arange(1, e - s + 1, dtype=torch.float64, device=vis.device)
                vals = last + (st / num_image_token) * k
                out[r, s:e] = vals
                last = float(math.ceil(float(vals[-1].float())))
            start = e
    out = out.to(torch.float32)
    if one_row:
        out = out[0]
    return (out, used) if return_strides else out


@register_pe("v2pe", positions="multimodal", paper="Ge et al., V2PE: Improving Multimodal Long-Context Capability of "
             "Vision-Language Models with Variable Visual Position Encoding, arXiv:2412.09616",
             causal_ok=True, relative=True)
class V2PE(RoPE):
    """RoPE at V2PE's float positions (official ``V2PE`` rotary class: ``freqs = outer(pos, inv_freq)``,
    ``cat(freqs, freqs)``, rotate-half), i.e. `zoo.pe.rope.RoPE` with ``layout="half"`` whose positions must be given.

    Produce the positions with `v2pe_position_ids` and pass them as ``Positions(ids=...)`` (float32).  Angles are
    float32 whatever the autocast dtype, so 1000.0625 and 1000.125 stay distinct under bf16.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, layout: str = "half", rot_dim: Optional[int] = None):
        super().__init__(head_dim, base=base, layout=layout, rot_dim=rot_dim)

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]):
        if pos is None or pos.ids is None:
            raise ValueError("V2PE needs Positions.ids (float positions from v2pe_position_ids), which the input "
                             "does not provide")
        return super().rotate(q, k, pos)
