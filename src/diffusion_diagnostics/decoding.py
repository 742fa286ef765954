"""Decoding noise to images, batch by batch: the interpolation grids of the DDPM and DDIM samplers."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .diffusion import DiffusionProcess, SamplingOptions
from .errors import DiagnosticsError
from .interpolation import interpolate
from .runtime import model_device

SAMPLERS = ("ddpm", "ddim")


def sample_in_batches(
    sampler: Callable[[torch.Tensor, str], torch.Tensor],
    latents: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Decode ``latents`` batch by batch; only one batch is on the device at a time."""
    if batch_size < 1:
        raise DiagnosticsError(f"batch_size must be at least 1, got {batch_size}")
    batches = latents.split(batch_size)
    outputs = []
    for index, batch in enumerate(batches):
        outputs.append(sampler(batch.to(device), f"batch {index + 1}/{len(batches)}").cpu())
    return torch.cat(outputs)


def interpolation_grid(
    diffusion: DiffusionProcess,
    z0: torch.Tensor,
    z1: torch.Tensor,
    steps: int = 7,
    sampler: str = "ddpm",
    ddim_steps: int = 50,
    eta: float = 0.0,
    interpolation: str = "lerp",
    batch_size: int = 72,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    shared_noise: bool = False,
    options: SamplingOptions | None = None,
) -> torch.Tensor:
    """Decode the interpolated noise between given endpoints; images ``(n, steps, C, H, W)`` in
    [-1, 1], row i the path from z0[i] to z1[i].

    DDPM draws its per-step noise from ``generator`` (on the sampling device); DDIM with η = 0
    uses none. ``shared_noise`` (DDPM): every image of a row gets the same per-step noise, so a
    row changes only with its starting noise (common random numbers). ``options``: clipping,
    precision, CUDA graphs and DDIM's spacing (the model's defaults when None).
    """
    device = torch.device(device) if device is not None else model_device(diffusion)
    latents = interpolate(z0.float(), z1.float(), steps, interpolation).flatten(0, 1)
    if sampler == "ddpm":
        group = steps if shared_noise else 1
        if shared_noise and batch_size >= 1:
            # A row's images must share a batch to share its noise: whole rows per batch.
            batch_size = max(steps, batch_size - batch_size % steps)

        def decode(batch, desc):
            return diffusion.sample(
                batch,
                generator=generator,
                progress=progress,
                desc=f"DDPM {desc}",
                shared_noise=group,
                options=options,
            )
    elif sampler == "ddim":

        def decode(batch, desc):
            return diffusion.sample_ddim(
                batch,
                ddim_steps,
                eta,
                generator=generator,
                progress=progress,
                desc=f"DDIM {desc}",
                options=options,
            )
    else:
        raise DiagnosticsError(f"sampler '{sampler}' is unknown; use one of {', '.join(SAMPLERS)}")
    images = sample_in_batches(decode, latents, batch_size, device)
    return images.reshape(len(z0), steps, *images.shape[1:])
