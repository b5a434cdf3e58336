"""An exponential moving average (EMA) of a model's weights, kept beside the model and evaluated with it.

    ema = WeightEma(model, decay=0.999)
    ...
    optimizer.step()
    ema.update(model, step)          # step: optimizer steps so far, 1-based
    task.evaluate(ema.module)

The decay follows timm's ``timm.utils.ModelEmaV3.get_decay`` (timm/utils/model_ema.py) with
``update_after_step=0, min_decay=0, warmup_gamma=1, warmup_power=2/3``: the first update copies the weights
(decay 0), the update after optimizer step ``s`` uses ``t = s - 1`` and, with warmup,
``min(decay, 1 - (1 + t) ** (-2/3))`` (0.37 at t=1, 0.90 at t=30, 0.99 at t=1000), without warmup ``decay``.
Parameters are interpolated (``ema += (1 - d) * (w - ema)``), buffers (norm statistics, cached tables) are copied,
as ModelEmaV3 does with ``exclude_buffers=True``. A parameter stored in fp16/bf16 is averaged in float32 (a low
precision EMA rounds ``(1 - d) * (w - ema)`` to zero); float32 and float64 ones keep their dtype.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import Tensor, nn

__all__ = ["WeightEma", "ema_decay", "WARMUP_POWER"]

WARMUP_POWER = 2 / 3          # timm's ModelEmaV3 default warmup_power (warmup_gamma 1)


def ema_decay(step: int, decay: float, warmup: bool = True) -> float:
    """The decay of the EMA update after optimizer step ``step`` (1-based), as ModelEmaV3.get_decay(step)."""
    t = step - 1
    if t <= 0:
        return 0.0
    if warmup:
        return min(decay, 1.0 - (1.0 + t) ** -WARMUP_POWER)
    return decay


class WeightEma:
    """The EMA copy (``module``, eval mode, no grad) of ``model``, on the model's device. Build it before any
    ``torch.compile`` of the model: the copy is the plain module."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        for p in self.module.parameters():
            if p.is_floating_point() and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Move the EMA toward ``model``'s weights after optimizer step ``step``; returns the decay used."""
        d = ema_decay(step, self.decay, self.warmup)
        ema_p, model_p = list(self.module.parameters()), list(model.parameters())
        if len(ema_p) != len(model_p):
            raise RuntimeError(f"EMA of a model with {len(ema_p)} parameters updated from one with {len(model_p)}")
        same = [(e, m) for e, m in zip(ema_p, model_p) if e.dtype == m.dtype]
        if same:
            torch._foreach_lerp_([e for e, _ in same], [m for _, m in same], 1.0 - d)
        for e, m in zip(ema_p, model_p):
            if e.dtype != m.dtype:
                e.lerp_(m.to(e.dtype), 1.0 - d)
        for e, m in zip(self.module.buffers(), model.buffers()):
            e.copy_(m)
        return d

    def state_dict(self) -> Dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)

    def weights_like(self, model: nn.Module) -> Dict[str, Tensor]:
        """The EMA's state dict with each tensor in the dtype of ``model``'s (what the run exports)."""
        ref = model.state_dict()
        return {k: v.to(ref[k].dtype) if k in ref else v for k, v in self.module.state_dict().items()}
