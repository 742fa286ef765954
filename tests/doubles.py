"""Test doubles shared by the test modules: the tiny UNet, the stand-in networks defined by a
formula instead of weights, the numpy reference of the noise schedules, one assertion for "one
error line", and a pickle that runs code. Fixtures stay in conftest.py; no test module imports
another, they all import from here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_diagnostics import DiagnosticsError, DiffusionProcess
from diffusion_diagnostics.unet import UNet

# --- networks ------------------------------------------------------------------------------------


def tiny_unet(seed: int = 0, *, zero_output: bool = False, **config) -> UNet:
    """A tiny UNet (8 base channels, two levels; ``config`` overrides any constructor argument) in
    eval mode, with random weights everywhere: the zero-initialised output layer is re-drawn,
    otherwise the network would be the constant zero predictor. ``zero_output=True`` keeps it
    zero, for a test that wants that predictor run through a real network. The weights depend on
    ``seed`` alone, and the global random state is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = UNet(**{"base_channels": 8, "channel_mults": (1, 2), **config})
        if not zero_output:
            nn.init.normal_(model.conv_out.weight, std=0.05)
            nn.init.normal_(model.conv_out.bias, std=0.05)
    return model.eval()


def tiny_unet2d(seed: int = 0, **config):
    """A tiny diffusers UNet2DModel (1 channel, 8 × 8 unless ``config`` says otherwise), as its
    constructor leaves it (in training mode); its weights depend on ``seed`` alone."""
    import diffusers

    layout = {
        "sample_size": 8,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 4,
    }
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return diffusers.UNet2DModel(**{**layout, **config})


class StandIn(nn.Module):
    """The base of every network defined by a formula instead of weights. It has no learnable
    weights, but one zero parameter, the device anchor, so that runtime.model_device finds the
    device it was moved to."""

    def __init__(self):
        super().__init__()
        self.device_anchor = nn.Parameter(torch.zeros(()))


class ZeroEps(StandIn):
    """ε̂ ≡ 0: the error in ε is the noise itself. DDIM then only scales by √ᾱ, so it decodes
    x_0 = x_T / √ᾱ_{T-1} at every step count S, and its inversion is exact."""

    def forward(self, x_t, t):
        return torch.zeros_like(x_t)


class BreaksAt(StandIn):
    """Predicts ε̂ = scale · x_t (zero by default), except NaN (or Inf) from timestep ``bad_from``
    downwards."""

    def __init__(self, bad_from: int, value: float = float("nan"), scale: float = 0.0):
        super().__init__()
        self.bad_from, self.value, self.scale = bad_from, value, scale

    def forward(self, x, t):
        eps = self.scale * x + self.device_anchor
        broken = (t <= self.bad_from).reshape(-1, 1, 1, 1)
        return torch.where(broken, torch.full_like(x, self.value), eps)


def breaking_process(bad_from: int, value: float = float("nan"), scale: float = 0.0) -> DiffusionProcess:
    """20 timesteps of the default schedule over MNIST-sized images, on a ``BreaksAt`` network."""
    return DiffusionProcess(BreaksAt(bad_from, value, scale), timesteps=20, sample_shape=(1, 28, 28))


# --- the noise schedules in float64 numpy --------------------------------------------------------


def reference_betas(
    timesteps: int, beta_start: float, beta_end: float, schedule: str = "linear"
) -> np.ndarray:
    """β_t as Ho et al. (linear), Rombach et al. (scaled_linear), Nichol & Dhariwal (cosine) define them."""
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), timesteps, dtype=np.float64) ** 2
    assert schedule == "squaredcos_cap_v2"
    s = np.arange(timesteps + 1) / timesteps
    f = np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2  # ᾱ(s) of Nichol & Dhariwal eq. 17
    return np.minimum(1 - f[1:] / f[:-1], 0.999)


def reference_schedule(
    timesteps: int, beta_start: float, beta_end: float, schedule: str = "linear"
) -> dict[str, np.ndarray]:
    """The schedule's arrays, named as DiffusionProcess names its own: β_t, α_t = 1 - β_t,
    ᾱ_t = ∏ α_s, ᾱ_{t-1} (1 before the first step) and the posterior variance
    β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t (DDPM eq. 7)."""
    betas = reference_betas(timesteps, beta_start, beta_end, schedule)
    alphas = 1.0 - betas
    alpha_bars = np.cumprod(alphas)
    alpha_bars_prev = np.r_[1.0, alpha_bars[:-1]]
    return {
        "betas": betas,
        "alphas": alphas,
        "alpha_bars": alpha_bars,
        "alpha_bars_prev": alpha_bars_prev,
        "posterior_variance": (1 - alpha_bars_prev) / (1 - alpha_bars) * betas,
    }


# --- errors --------------------------------------------------------------------------------------


def one_error_line(call, *words, error: type[DiagnosticsError] = DiagnosticsError) -> str:
    """``call()`` raises DiagnosticsError (or the subclass ``error``) with a one-line message
    holding every one of ``words``; returns the message."""
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for word in words:
        assert str(word) in message, (word, message)
    return message


class CreatesMarker:
    """Unpickling this calls open(marker, "w"): code execution, with a visible side effect."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- Gaussian data, whose probability-flow ODE has a closed form ------------------------------------

MU, SD = 0.3, 0.5


def gaussian_alpha_bars(
    timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """ᾱ_t of a linear β schedule, in float64."""
    return torch.cumprod(1 - torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64), 0)


class ContinuousGaussianEps(StandIn):
    """The exact E[ε | x_t] for data x_0 ~ N(MU, SD²) per pixel, at any t, integer or not: σ(t)
    interpolated in log σ between integer timesteps, as diffusers' schedulers map their noise
    levels to t, so that the network answers at the noise level the solver is at."""

    def __init__(self, alpha_bars: torch.Tensor):
        super().__init__()
        self.register_buffer("log_sigmas", ((1 - alpha_bars) / alpha_bars).sqrt().log())

    def forward(self, x_t, t):
        t = t.double().clamp(0, len(self.log_sigmas) - 1)
        low = t.floor().long().clamp(max=len(self.log_sigmas) - 2)
        weight = t - low
        sigma = ((1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[low + 1]).exp()
        ab = (1 / (1 + sigma**2)).reshape(-1, *([1] * (x_t.ndim - 1)))
        x = x_t.double()
        return ((1 - ab).sqrt() * (x - ab.sqrt() * MU) / (ab * SD**2 + 1 - ab)).to(x_t.dtype)


def ode_solution(noise: torch.Tensor, sigma_start: float) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T = noise from noise level σ (x / √ᾱ = x_0 + σ ε)
    to σ = 0: for Gaussian data x / √ᾱ - MU shrinks by SD / √(SD² + σ²)."""
    start = noise.double() * math.sqrt(1 + sigma_start**2)
    return MU + (start - MU) * SD / math.sqrt(SD**2 + sigma_start**2)
