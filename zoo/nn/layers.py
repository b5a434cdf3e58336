"""Small shared layers: MLP, DropPath, LayerScale (key names follow timm)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Mlp", "DropPath", "LayerScale"]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None, act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, out or dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al., 2016)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def init_decoder_weights(model: nn.Module, depth: int, std: float = 0.02, skip: str = None) -> None:
    """GPT-2 initialisation: every Linear ``N(0, std)`` (the residual projections ``attn.proj`` / ``mlp.fc2``
    ``N(0, std / sqrt(2 depth))``), biases zero.  Modules whose name contains ``skip`` keep their own init."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not (skip and skip in name):
            resid = name.endswith("attn.proj") or name.endswith("mlp.fc2")
            nn.init.normal_(m.weight, std=std / (2 * depth) ** 0.5 if resid else std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
