"""Paths through noise space: linear and spherical interpolation between endpoint pairs.

A grid has one row per endpoint pair (z0, z1) and ``steps`` columns; column j is the noise at
α = j / (steps - 1), so column 0 is z0 itself and the last column z1 itself.
"""

from __future__ import annotations

import torch

from .errors import DiagnosticsError

METHODS = ("lerp", "slerp")


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per row: keeps the norm that Gaussian noise concentrates at,
    which linear interpolation shrinks by up to √2 mid-way."""
    a, b = z0.flatten(1), z1.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]
    alpha = alpha[None, :, None]
    sin_theta = torch.sin(theta)[:, None]
    # Nearly parallel endpoints: the spherical weights are 0/0, and lerp is the limit.
    parallel = sin_theta.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(parallel, 1 - alpha, torch.sin((1 - alpha) * theta[:, None]) / safe)
    w1 = torch.where(parallel, alpha, torch.sin(alpha * theta[:, None]) / safe)
    return (w0 * a[:, None] + w1 * b[:, None]).reshape(len(z0), -1, *z0.shape[1:])


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, method: str = "lerp") -> torch.Tensor:
    """Noise for every cell of the grid, shape ``(n, steps, *z0.shape[1:])``."""
    if z0.shape != z1.shape:
        raise DiagnosticsError(f"endpoints differ in shape: z0 {tuple(z0.shape)}, z1 {tuple(z1.shape)}")
    if steps < 2:
        raise DiagnosticsError(f"an interpolation needs at least 2 steps (its two endpoints), got {steps}")
    alpha = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype, device=z0.device)
    if method == "lerp":
        view = alpha.reshape(1, steps, *([1] * (z0.ndim - 1)))
        grid = (1 - view) * z0[:, None] + view * z1[:, None]  # z = (1 - α) z0 + α z1
    elif method == "slerp":
        grid = slerp(z0, z1, alpha)
    else:
        raise DiagnosticsError(f"interpolation '{method}' is unknown; use one of {', '.join(METHODS)}")
    grid[:, 0], grid[:, -1] = z0, z1  # the endpoints exactly, whatever rounding did
    return grid
