"""The optimizer step under ``train.amp=fp16``: a dynamic loss scale (``torch.amp.GradScaler``) keeps small
gradients from underflowing float16; a step whose scaled gradients overflowed is skipped and the scale halves.

    scaling = LossScaling(device, enabled=amp == "fp16")
    scaling.backward(loss)                                   # scale, then backward
    grad_norm = scaling.clip(optimizer, params, max_norm)    # unscale_, then clip (the true gradient norm)
    scaling.step(optimizer, scheduler, grad_norm, step)      # scaler.step + update; the lr schedule advances

Disabled (fp32, bf16) it is the plain ``backward`` / ``clip_grad_norm_`` / ``optimizer.step``.

A skipped step is not a divergence: the weights are left as they were. It still counts as a step: the lr schedule
and ``train.steps`` count optimizer steps attempted, so the lr of step ``s`` is the same whether or not earlier steps
were skipped, and a resumed run (the scaler's state is in the checkpoint) skips the same steps. What is a divergence:
a non-finite loss (the forward pass overflowed, or the weights are bad: the scale cannot fix either), or
`MAX_SKIPPED_IN_A_ROW` skipped steps in a row (gradients that are not finite at any scale). The engine checks these
where it checks the loss (``stuck_step``), without a device sync per step.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, Optional

import torch
from torch import Tensor

__all__ = ["LossScaling", "MAX_SKIPPED_IN_A_ROW", "INIT_SCALE"]

INIT_SCALE = 2.0 ** 16            # GradScaler's default
# 25 halvings take the default scale from 2^16 to 2^-9: gradients that still overflow are not a matter of scale
MAX_SKIPPED_IN_A_ROW = 25


def _grad_norm(params: Iterable[torch.nn.Parameter]) -> Tensor:
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))


class LossScaling:
    def __init__(self, device: torch.device, enabled: bool, init_scale: Optional[float] = None) -> None:
        self.enabled = bool(enabled)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale or INIT_SCALE, enabled=self.enabled)
        self.skipped = torch.zeros((), dtype=torch.long, device=device)          # steps skipped so far
        self.in_a_row = torch.zeros((), dtype=torch.long, device=device)         # ... of the last steps
        self.stuck_at = torch.full((), -1, dtype=torch.long, device=device)      # step where in_a_row hit the max

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def clip(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter],
             max_norm: Optional[float]) -> Optional[Tensor]:
        """Unscale the gradients (fp16), clip them to ``max_norm`` when set; returns their norm before clipping
        (None without clipping in fp32/bf16). Under fp16 a non-finite norm means the step will be skipped."""
        params = list(params)
        if self.enabled:
            self.scaler.unscale_(optimizer)
        if max_norm is not None:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        return _grad_norm(params) if self.enabled else None

    def step(self, optimizer: torch.optim.Optimizer, scheduler: Any, grad_norm: Optional[Tensor], step: int) -> None:
        """The optimizer step (skipped by the scaler where the gradients are not finite) and the lr schedule's;
        ``step`` is the 1-based number of this step."""
        if not self.enabled:
            optimizer.step()
            scheduler.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
        # GradScaler skips the step iff a gradient is not finite, iff their norm is not (no sync: on the device)
        skipped = (~torch.isfinite(grad_norm)).to(self.skipped.device).long()
        self.skipped += skipped
        self.in_a_row.add_(1).mul_(skipped)
        self.stuck_at.masked_fill_((self.stuck_at < 0) & (self.in_a_row >= MAX_SKIPPED_IN_A_ROW), step)
        with warnings.catch_warnings():       # torch's warning when the first optimizer step was skipped
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            scheduler.step()

    def stuck_step(self) -> Optional[int]:
        """The step at which `MAX_SKIPPED_IN_A_ROW` steps in a row had been skipped, if that happened (a sync)."""
        if not self.enabled:
            return None
        s = int(self.stuck_at.item())
        return s if s >= 0 else None

    def log_fields(self) -> Dict[str, Any]:
        """What a metrics line reports under fp16: the current loss scale and the steps skipped so far."""
        if not self.enabled:
            return {}
        return {"loss_scale": self.scaler.get_scale(), "skipped_steps": int(self.skipped.item())}

    def state_dict(self) -> Optional[Dict[str, Any]]:
        if not self.enabled:
            return None
        return {"scaler": self.scaler.state_dict(), "skipped": int(self.skipped.item()),
                "in_a_row": int(self.in_a_row.item())}

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        """Restore a checkpoint's state; None (a run without fp16 so far, or fp16 off now) leaves it as built."""
        if not self.enabled or not state:
            return
        self.scaler.load_state_dict(state["scaler"])
        self.skipped.fill_(int(state["skipped"]))
        self.in_a_row.fill_(int(state["in_a_row"]))
