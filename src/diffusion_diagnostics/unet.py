"""This package's own denoising UNet (28 × 28 by default): sinusoidal time embedding, residual blocks.

The network runs in channels-last memory format (weights and activations): oneDNN's
convolutions are fastest there (see BENCHMARKS.md). Only the layout in memory changes: the
state_dict has the same names, shapes and values, checkpoint.save_checkpoint writes it in the
default layout, and the output comes back in the default layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, as in the Transformer and the DDPM UNet."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with its statistics computed in float32, handed back in the input's dtype.

    A no-op for float32 input. Under bf16 autocast (``precision: bfloat16``) the activations
    arrive in bf16, and PyTorch's bf16 GroupNorm on channels-last CPU tensors is slower than
    converting to float32 and normalising there (measured in BENCHMARKS.md). Same parameters, same
    state_dict as nn.GroupNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def group_norm(channels: int) -> nn.GroupNorm:
    return GroupNorm32(8 if channels % 8 == 0 else 1, channels)


class ResidualBlock(nn.Module):
    """Two 3 × 3 convolutions with the time embedding added in between (DDPM's ResNet block)."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        # In place where autograd allows it: fewer passes over memory, which at these channel
        # counts costs as much as the arithmetic. A convolution's backward does not need its
        # output, so adding into it is always safe; SiLU's backward needs its input, so SiLU
        # overwrites it only when no graph is being recorded.
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h += self.time_proj(time)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        h += self.skip(x)
        return h


class UNet(nn.Module):
    """ε-network: ``model(x_t, t) -> ε̂`` with ``t`` int64 of shape ``(B,)``.

    Each entry of ``channel_mults`` is one resolution level (28 -> 14 -> 7 for three levels).
    The constructor arguments are what a checkpoint stores to rebuild the network.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "image_size": image_size,
            "base_channels": base_channels,
            "channel_mults": list(channel_mults),
            "num_res_blocks": num_res_blocks,
            "dropout": dropout,
        }
        self.sample_shape = (in_channels, image_size, image_size)
        self.base_channels = base_channels
        time_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        channels = base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(ResidualBlock(channels, base_channels * mult, time_dim, dropout))
                channels = base_channels * mult
                skip_channels.append(channels)
            if level < len(channel_mults) - 1:
                self.down.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
                skip_channels.append(channels)

        self.middle = nn.ModuleList([ResidualBlock(channels, channels, time_dim, dropout) for _ in range(2)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(
                    ResidualBlock(channels + skip_channels.pop(), base_channels * mult, time_dim, dropout)
                )
                channels = base_channels * mult
            if level > 0:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(channels, channels, 3, padding=1),
                    )
                )

        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, in_channels, 3, padding=1)
        # Start as the zero predictor, a stable point for the ε-MSE loss.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = self.time_mlp(timestep_embedding(t, self.base_channels))
        # One input channel: both layouts are the same there; make sure h is channels-last.
        h = self.conv_in(x).contiguous(memory_format=torch.channels_last)
        skips = [h]
        for layer in self.down:
            h = layer(h, time) if isinstance(layer, ResidualBlock) else layer(h)
            skips.append(h)
        for block in self.middle:
            h = block(h, time)
        for layer in self.up:
            if isinstance(layer, ResidualBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), time)
            else:
                h = layer(h)
        h = F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled())
        return self.conv_out(h).contiguous()
