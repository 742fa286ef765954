"""A user's own denoising network, for the entry-point form of load_model (test_models.py imports it
as the config's ``entry_point: own_network:build`` would)."""

from __future__ import annotations

import math

import torch
from torch import nn


class TinyDenoiser(nn.Module):
    """Two convolutions around a sinusoidal embedding of t: small, yet its output depends on x_t and t."""

    def __init__(self, channels: int = 1, width: int = 8):
        super().__init__()
        self.width = width
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Linear(width, width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        frequencies = torch.exp(
            -math.log(1000.0) * torch.arange(self.width // 2, device=t.device) / self.width
        )
        angles = t.float()[:, None] * frequencies[None]
        embedding = self.time(torch.cat([angles.sin(), angles.cos()], dim=1))
        return self.conv_out(torch.relu(self.conv_in(x_t) + embedding[:, :, None, None]))


def build(channels: int = 1, width: int = 8) -> TinyDenoiser:
    return TinyDenoiser(channels, width)


def not_a_network(**_) -> str:
    return "a string, not a network"
