"""The original utility's interface: its four sampling and grid functions, with its names,
signatures and defaults (per_timestep_loss, the fifth, is in .analysis). Sampling runs where the
model is: ``device`` is kept for the original's signatures, and defaults to the model's device
instead of 'cuda'."""

from __future__ import annotations

import torch

from .decoding import Sampler, interpolation_grid
from .grids import save_grid
from .runtime import model_device


def _on_model_device(diffusion, device, x: torch.Tensor) -> tuple[torch.device, torch.Tensor]:
    device = torch.device(device) if device is not None else model_device(diffusion)
    return device, x.to(device)


def sample_from_xt(diffusion, x_t, device=None, generator=None):
    """Full stochastic DDPM sampling from given noise x_T; returns x_0 in [-1, 1]."""
    _, x_t = _on_model_device(diffusion, device, x_t)
    return diffusion.sample(x_t, generator=generator)


def ddim_sample_from_xt(diffusion, x_t, ddim_steps=1000, eta=0.0, device=None, generator=None):
    """DDIM sampling from given noise x_T with ``ddim_steps`` steps; deterministic when η = 0. By
    default all 1000 steps of the original's schedule, as the original ran."""
    _, x_t = _on_model_device(diffusion, device, x_t)
    return diffusion.sample_ddim(x_t, ddim_steps, eta, generator=generator)


def _random_endpoints(diffusion, n, generator):
    shape = (n, *diffusion.sample_shape)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def interpolate_noise_and_generate(
    diffusion,
    n=8,
    steps=7,
    save_path="interp.png",
    device=None,
    *,
    interpolation="lerp",
    batch_size=72,
    generator=None,
):
    """n random noise pairs, each interpolated in ``steps`` columns and decoded with DDPM;
    saves the grid and returns ``save_path``. ``generator`` (CPU) seeds the endpoints."""
    z0, z1 = _random_endpoints(diffusion, n, generator)
    images = interpolation_grid(diffusion, z0, z1, steps, Sampler("ddpm"), interpolation, batch_size)
    return save_grid(images, save_path)


def interpolate_noise_and_generate_ddim(
    diffusion,
    n=8,
    steps=7,
    ddim_steps=1000,
    eta=0.0,
    save_path="interp.png",
    device=None,
    *,
    interpolation="lerp",
    batch_size=72,
    generator=None,
):
    """As :func:`interpolate_noise_and_generate`, decoded with DDIM (deterministic when η = 0)."""
    z0, z1 = _random_endpoints(diffusion, n, generator)
    images = interpolation_grid(
        diffusion, z0, z1, steps, Sampler("ddim", ddim_steps, eta), interpolation, batch_size
    )
    return save_grid(images, save_path)
