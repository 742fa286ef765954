"""The variational bound on the negative log-likelihood of 8-bit images, term by term, in bits/dim.

DDPM (Ho et al. 2020) eq. 5 writes the bound as L = L_T + Σ_{t>1} L_{t-1} + L_0 with
L_T = KL(q(x_T | x_0) ‖ N(0, I)), L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t)) and the
decoder term L_0 = -log p_θ(x_0 | x_1), a Gaussian discretized over the 256 pixel bins (section 3.3,
eq. 13). Our timestep index t = 0 … T-1 is DDPM's t + 1, so the term computed at index t is DDPM's
L_t: the decoder at index 0, a KL at every other index, and the prior after the last one.

Conventions at the chain's start follow improved-diffusion (Nichol & Dhariwal 2021): β̃_0 = 0, so
wherever a log-variance is needed at index 0 it is β̃_1's; with ``fixed_large`` the reverse variance
is β_t from index 1 on. The model's mean is μ̃(x_t, x̂_0) with x̂_0 as the network gives it, never
clipped, since clipping is a sampling choice and not part of p_θ. All arithmetic is float64.
"""

from __future__ import annotations

import math

import torch

from .diffusion import DiffusionProcess
from .errors import DiagnosticsError

BOUND_VARIANCE_TYPES = ("fixed_small", "fixed_large")
PIXEL_LEVELS = 256
# Half a bin of 8-bit pixels scaled to [-1, 1] as x = 2k/255 - 1.
HALF_BIN = 1.0 / (PIXEL_LEVELS - 1)


def nats_to_bits_per_dim(nats: torch.Tensor) -> torch.Tensor:
    """Per-image mean over every dimension of per-element nats, in bits: (B, ...) -> (B,)."""
    return nats.flatten(1).mean(1) / math.log(2.0)


def normal_kl(
    mean_1: torch.Tensor, log_var_1: torch.Tensor, mean_2: torch.Tensor, log_var_2: torch.Tensor
) -> torch.Tensor:
    """KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) elementwise, in nats."""
    return 0.5 * (
        log_var_2
        - log_var_1
        + torch.exp(log_var_1 - log_var_2)
        + (mean_1 - mean_2) ** 2 / log_var_2.exp()
        - 1.0
    )


def check_bound_applies(diffusion: DiffusionProcess) -> None:
    """The bound needs a fixed reverse variance and a β̃_1 for the decoder."""
    if diffusion.variance_type not in BOUND_VARIANCE_TYPES:
        raise DiagnosticsError(
            f"the likelihood bound covers variance_type {' and '.join(BOUND_VARIANCE_TYPES)}, "
            f"not this model's '{diffusion.variance_type}'"
        )
    if diffusion.timesteps < 2:
        raise DiagnosticsError(
            f"the likelihood bound needs at least 2 timesteps, the model has {diffusion.timesteps}"
        )


def check_pixel_range(images: torch.Tensor) -> None:
    """The 8-bit bound scores pixels in [-1, 1] only: the decoder's end bins stop there."""
    low, high = float(images.min()), float(images.max())
    if low < -1.0 or high > 1.0:
        raise DiagnosticsError(
            f"images span [{low:.4g}, {high:.4g}]; the 8-bit likelihood bound needs pixels in [-1, 1]"
        )


def pixel_bins(images: torch.Tensor) -> torch.Tensor:
    """The 8-bit level k = 0 … 255 whose bin holds each pixel (the nearest centre 2k/255 - 1)."""
    return ((images.double() + 1.0) * (PIXEL_LEVELS - 1) / 2).round().clamp(0, PIXEL_LEVELS - 1)


def on_8bit_grid(images: torch.Tensor, tolerance: float = 1e-3) -> bool:
    """Whether every pixel sits on a bin centre (data resized for a model lies between them)."""
    levels = (images.double() + 1.0) * (PIXEL_LEVELS - 1) / 2
    return bool(((levels - levels.round()).abs() <= tolerance).all())


def posterior_log_variance(diffusion: DiffusionProcess) -> torch.Tensor:
    """log β̃_t of q(x_{t-1} | x_t, x_0) per index, with β̃_1 at index 0, where β̃_0 = 0."""
    variance = diffusion.posterior_variance.double()
    return torch.cat([variance[1:2], variance[1:]]).log()


def reverse_log_variance(diffusion: DiffusionProcess) -> torch.Tensor:
    """log σ_t² of p_θ(x_{t-1} | x_t) per index: β̃_t (fixed_small) or β_t (fixed_large), DDPM
    section 3.2; β̃_1 at index 0 for both, so that the decoder's width is the same."""
    check_bound_applies(diffusion)
    if diffusion.variance_type == "fixed_small":
        return posterior_log_variance(diffusion)
    betas = diffusion.betas.double()
    return torch.cat([diffusion.posterior_variance[1:2].double(), betas[1:]]).log()


def log_gaussian_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Φ(upper) - Φ(lower)) for standardized bounds lower < upper (either may be infinite).

    An interval above the mean is mirrored below it, Φ(b) - Φ(a) = Φ(-a) - Φ(-b), so that both
    ends are lower tails, where log Φ keeps its digits; the difference is then taken in log space.
    """
    mirrored = (lower + upper) > 0
    lower, upper = torch.where(mirrored, -upper, lower), torch.where(mirrored, -lower, upper)
    log_upper, log_lower = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
    return log_upper + torch.log(-torch.expm1(log_lower - log_upper))


def discretized_gaussian_log_likelihood(
    images: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor
) -> torch.Tensor:
    """log p(x_0) per pixel, p the Gaussian N(mean, exp(log_variance)) integrated over the pixel's
    8-bit bin [x - 1/255, x + 1/255], the end bins reaching to ∓∞ (DDPM eq. 13)."""
    level = pixel_bins(images)
    centre = level * 2 / (PIXEL_LEVELS - 1) - 1.0
    inverse_std = torch.exp(-0.5 * log_variance.double())
    mean = mean.double()
    lower = torch.where(level == 0, -math.inf, (centre - HALF_BIN - mean) * inverse_std)
    upper = torch.where(level == PIXEL_LEVELS - 1, math.inf, (centre + HALF_BIN - mean) * inverse_std)
    return log_gaussian_mass(lower, upper)


def _broadcast(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.to(t.device)[t].reshape(-1, *([1] * (ndim - 1)))


def kl_term_bpd(
    diffusion: DiffusionProcess,
    x_0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_predicted: torch.Tensor,
) -> torch.Tensor:
    """L_t = KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t)) per sample (index t ≥ 1), bits/dim."""
    true_mean, _ = diffusion.posterior_mean_variance(x_t, t, x_0)
    model_mean, _ = diffusion.posterior_mean_variance(x_t, t, x0_predicted)
    log_var_q = _broadcast(posterior_log_variance(diffusion), t, x_t.ndim)
    log_var_p = _broadcast(reverse_log_variance(diffusion), t, x_t.ndim)
    return nats_to_bits_per_dim(normal_kl(true_mean.double(), log_var_q, model_mean.double(), log_var_p))


def decoder_nll_bpd(
    diffusion: DiffusionProcess, x_0: torch.Tensor, x0_predicted: torch.Tensor
) -> torch.Tensor:
    """L_0 = -log p_θ(x_0 | x_1) per image, bits/dim, from x̂_0 predicted at index 0, where the
    model's mean μ̃(x_t, x̂_0) is x̂_0 itself (its coefficients there are 1 and 0)."""
    log_variance = reverse_log_variance(diffusion)[0].to(x_0.device)
    return nats_to_bits_per_dim(-discretized_gaussian_log_likelihood(x_0, x0_predicted, log_variance))


def bound_terms_bpd(
    diffusion: DiffusionProcess,
    x_0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_predicted: torch.Tensor,
) -> torch.Tensor:
    """Each sample's term of the bound at its own index t, bits/dim, shape (B,): the decoder L_0
    where t = 0, the KL L_t elsewhere."""
    kl = kl_term_bpd(diffusion, x_0, x_t, t, x0_predicted)
    at_start = t == 0
    if not at_start.any():
        return kl
    return torch.where(at_start, decoder_nll_bpd(diffusion, x_0, x0_predicted), kl)


def prior_bpd(diffusion: DiffusionProcess, x_0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per image, bits/dim; no network involved."""
    last = diffusion.timesteps - 1
    mean = diffusion.sqrt_alpha_bars[last].double() * x_0.double()
    log_var = 2 * diffusion.sqrt_one_minus_alpha_bars[last].double().log()
    zero = torch.zeros((), dtype=torch.float64, device=x_0.device)
    return nats_to_bits_per_dim(normal_kl(mean, log_var.expand_as(mean), zero, zero))
