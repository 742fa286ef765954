"""The variational bound on the negative log-likelihood of 8-bit images in bits/dim: its terms in
closed form, and its estimate from the loss analysis's draws of t (one per image).

DDPM (Ho et al. 2020) eq. 5 writes the bound as L = L_T + Σ_{t>1} L_{t-1} + L_0 with
L_T = KL(q(x_T | x_0) ‖ N(0, I)), L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t)) and the
decoder term L_0 = -log p_θ(x_0 | x_1), a Gaussian discretized over the 256 pixel bins (section 3.3,
eq. 13). Our timestep index t = 0 … T-1 is DDPM's t + 1, so the term computed at index t is DDPM's
L_t: the decoder at index 0, a KL at every other index, and the prior after the last one.

Conventions at the chain's start follow improved-diffusion (Nichol & Dhariwal 2021): β̃_0 = 0, so
wherever a log-variance is needed at index 0 it is β̃_1's; with ``fixed_large`` the reverse variance
is β_t from index 1 on; with ``learned_range`` it is the network's own (improved-diffusion eq. 15,
:meth:`DiffusionProcess.learned_log_variance`), at index 0 between log β_0 and log β̃_1 (with
``learned``, the network's σ² itself at every index). The
model's mean is μ̃(x_t, x̂_0) with x̂_0 as the network gives it, never clipped, since clipping is a
sampling choice and not part of p_θ. All arithmetic is float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .diffusion import DiffusionProcess
from .errors import DiagnosticsError
from .strata import bucket_covariance, bucket_moments, raise_if_not_finite

BOUND_VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range", "learned")
PIXEL_LEVELS = 256
# Draws a cell of the bound's estimate expects (kl_cells): enough for a variance, few enough that
# the cells follow L_t where it changes fast.
CELL_DRAWS = 4
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
    log_variance: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_t = KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t)) per sample (index t ≥ 1), bits/dim;
    ``log_variance``: p_θ's own, elementwise, for a learned variance (None: the fixed one)."""
    true_mean, _ = diffusion.posterior_mean_variance(x_t, t, x_0)
    model_mean, _ = diffusion.posterior_mean_variance(x_t, t, x0_predicted)
    log_var_q = _broadcast(posterior_log_variance(diffusion), t, x_t.ndim)
    log_var_p = _reverse_log_variance_at(diffusion, t, x_t.ndim, log_variance)
    return nats_to_bits_per_dim(normal_kl(true_mean.double(), log_var_q, model_mean.double(), log_var_p))


def decoder_nll_bpd(
    diffusion: DiffusionProcess,
    x_0: torch.Tensor,
    x0_predicted: torch.Tensor,
    log_variance: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_0 = -log p_θ(x_0 | x_1) per image, bits/dim, from x̂_0 predicted at index 0, where the
    model's mean μ̃(x_t, x̂_0) is x̂_0 itself (its coefficients there are 1 and 0)."""
    if log_variance is None:
        log_variance = reverse_log_variance(diffusion)[0].to(x_0.device)
    return nats_to_bits_per_dim(-discretized_gaussian_log_likelihood(x_0, x0_predicted, log_variance))


def bound_terms_bpd(
    diffusion: DiffusionProcess,
    x_0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_predicted: torch.Tensor,
    log_variance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each sample's term of the bound at its own index t, bits/dim, shape (B,): the decoder L_0
    where t = 0, the KL L_t elsewhere; ``log_variance`` as :func:`kl_term_bpd` takes it."""
    kl = kl_term_bpd(diffusion, x_0, x_t, t, x0_predicted, log_variance)
    at_start = t == 0
    if not at_start.any():
        return kl
    return torch.where(at_start, decoder_nll_bpd(diffusion, x_0, x0_predicted, log_variance), kl)


def _reverse_log_variance_at(
    diffusion: DiffusionProcess, t: torch.Tensor, ndim: int, learned: torch.Tensor | None
) -> torch.Tensor:
    if learned is not None:
        return learned.double()
    return _broadcast(reverse_log_variance(diffusion), t, ndim)


def predicted(
    diffusion: DiffusionProcess, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(ε̂, x̂_0, log σ²_θ) of one forward pass: the last None unless the variance is learned."""
    output = diffusion.model(x_t, t)
    eps, x0_predicted = diffusion.eps_and_x0(x_t, t, output)
    log_variance = diffusion.learned_log_variance(output, x_t, t) if diffusion.learned_variance else None
    return eps, x0_predicted, log_variance


def prior_bpd(diffusion: DiffusionProcess, x_0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per image, bits/dim; no network involved."""
    last = diffusion.timesteps - 1
    mean = diffusion.sqrt_alpha_bars[last].double() * x_0.double()
    log_var = 2 * diffusion.sqrt_one_minus_alpha_bars[last].double().log()
    zero = torch.zeros((), dtype=torch.float64, device=x_0.device)
    return nats_to_bits_per_dim(normal_kl(mean, log_var.expand_as(mean), zero, zero))


# --- the estimate, from one draw of t per image -------------------------------------------------


@dataclass
class ExactCheck:
    """The bound of a few images with every t evaluated (improved-diffusion's ``calc_bpd_loop``),
    against the stratified estimate: they differ by image sampling and noise only."""

    num_images: int
    total_bpd: float
    std_error: float
    difference: float
    combined_std_error: float

    @property
    def agrees(self) -> bool:
        return abs(self.difference) <= 2 * self.combined_std_error


@dataclass
class VariationalBound:
    """The bound on -log p(x_0) in bits/dim, mean over the images: L_T + L_0 + Σ_{t ≥ 1} L_t."""

    total_bpd: float
    std_error: float
    prior_bpd: float
    decoder_bpd: float
    kl_bpd: float
    num_images: int
    timesteps: int
    on_8bit_grid: bool
    exact_check: ExactCheck | None = None

    def summary(self) -> dict:
        summary = asdict(self)
        if self.exact_check is not None:
            summary["exact_check"]["agrees_within_2_se"] = self.exact_check.agrees
        return summary


def decoder_pass(
    diffusion: DiffusionProcess, x_0: torch.Tensor, generator: torch.Generator, finite_only: bool = True
) -> torch.Tensor:
    """L_0 of every image, from one more forward pass at t = 0 (bits/dim, float64 on the CPU);
    ``finite_only``: a NaN or Inf is one error line."""
    t = torch.zeros(len(x_0), dtype=torch.long, device=x_0.device)
    noise = torch.randn(x_0.shape, generator=generator).to(x_0.device)
    x_1, _ = diffusion.add_noise(x_0, t, noise=noise)
    _, x0_predicted, log_variance = predicted(diffusion, x_1, t)
    decoder = decoder_nll_bpd(diffusion, x_0, x0_predicted, log_variance)
    if finite_only:
        raise_if_not_finite(decoder, t, 0)
    return decoder.cpu()


@dataclass
class BoundSamples:
    """Per-sample inputs of the bound: each draw's t and bound term, each image's L_0 and L_T."""

    t: torch.Tensor
    term: torch.Tensor
    decoder: torch.Tensor
    prior: torch.Tensor


@dataclass
class Cells:
    """The strata the KL draws are pooled in: runs of timesteps inside one bucket, each holding at
    least two draws, so that every cell has a mean and a variance."""

    of_draw: torch.Tensor
    width: torch.Tensor
    bucket: torch.Tensor


def cell_bounds(t: torch.Tensor, low: int, high: int) -> list[int]:
    """Edges of the cells of [low, high) for the draws ``t`` that fell in it.

    Equal cells just wide enough to expect CELL_DRAWS draws each (one timestep each once the draws
    are dense); a cell that got fewer than two is merged into its neighbour, so that each has a
    mean and a variance. The cells depend only on where the draws fell, never on their values.
    """
    width = min(high - low, max(1, math.ceil(CELL_DRAWS * (high - low) / len(t))))
    bounds = [*range(low, high, width), high]
    counts = torch.histogram(t.double(), torch.tensor(bounds, dtype=torch.float64)).hist.long().tolist()
    while len(counts) > 1 and min(counts) < 2:
        sparse = counts.index(min(counts))
        neighbour = sparse + 1 if sparse + 1 < len(counts) else sparse - 1
        counts[min(sparse, neighbour)] += counts.pop(max(sparse, neighbour))
        bounds.pop(max(sparse, neighbour))
    return bounds


def kl_cells(t: torch.Tensor, edges: torch.Tensor) -> Cells:
    """Cells for the draws ``t`` (all ≥ 1), bucket by bucket; t = 0 is left out (the decoder's).

    Pooling draws by timestep rather than by bucket keeps the steep fall of L_t across a bucket out
    of the variance: in the first bucket of an MNIST model (measured on one shipped before) L_1 is
    150 × L_99, and pooled by bucket the 10,000 held-out digits give a standard error of 0.05
    bits/dim instead of 0.015.
    """
    of_draw = torch.empty_like(t)
    widths, buckets = [], []
    for bucket in range(len(edges) - 1):
        low, high = max(int(edges[bucket]), 1), int(edges[bucket + 1])
        if high <= low:
            continue
        inside = (t >= low) & (t < high)
        if not inside.any():
            raise DiagnosticsError(f"timestep bucket {bucket} got no draws with t > 0; use more batches")
        bounds = cell_bounds(t[inside], low, high)
        of_draw[inside] = len(widths) + torch.bucketize(t[inside], torch.tensor(bounds[1:-1]), right=True)
        widths += [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
        buckets += [bucket] * (len(bounds) - 1)
    return Cells(of_draw, torch.tensor(widths, dtype=torch.float64), torch.tensor(buckets))


@dataclass
class ImageTerms:
    """A term measured on every image (L_0, L_T): over all images, and at the images of the KL draws."""

    every: torch.Tensor
    at_draws: torch.Tensor


def stratified_sum(
    values: torch.Tensor, cells: Cells, included: torch.Tensor, image: ImageTerms | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_c w_c · mean_c(values) over the ``included`` cells, plus the mean of a per-image term G,
    and its variance (Cochran, Sampling Techniques, section 5.3): Σ w_c² s_c² / n_c, + s_G² / N,
    + 2 Σ w_c cov_c(values, G) / N, since a cell's draws and their images' G come from the same images."""
    mean, count, variance = bucket_moments(values, cells.of_draw, len(cells.width))
    weight = torch.where(included, cells.width, 0.0)
    total = (weight * mean).where(included, 0.0).sum()
    total_variance = (weight**2 * variance / count).where(included, 0.0).sum()
    if image is None:
        return total, total_variance
    n = len(image.every)
    covariance = bucket_covariance(values, image.at_draws, cells.of_draw, len(cells.width))
    cross = 2 * (weight * covariance).where(included, 0.0).sum() / n
    return total + image.every.mean(), total_variance + image.every.var() / n + cross


def bound_by_bucket(
    samples: BoundSamples, edges: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[float, float]]:
    """The estimate of the bound from the stratified draws: per bucket its mean term per timestep
    and standard error, the KL sum Σ_{t≥1} L_t, and the total with its standard error.

    L_0 is not left to the draw (bucket 0 sees t = 0 about once in its width, and L_0 is far larger
    than its neighbours): every image's L_0 comes from the decoder pass, and the KL terms from the
    draws with t ≥ 1, pooled in cells (:func:`kl_cells`). The sum of the cells' width × mean is
    unbiased, and with one cell per bucket it is T × the mean term of equal buckets.
    """
    is_kl = samples.t > 0
    cells, kl = kl_cells(samples.t[is_kl], edges), samples.term[is_kl]
    every_cell = torch.ones(len(cells.width), dtype=torch.bool)
    image_terms = samples.decoder + samples.prior
    kl_sum, _ = stratified_sum(kl, cells, every_cell)
    total, total_variance = stratified_sum(kl, cells, every_cell, ImageTerms(image_terms, image_terms[is_kl]))
    decoder = ImageTerms(samples.decoder, samples.decoder[is_kl])
    per_bucket = [
        stratified_sum(kl, cells, cells.bucket == bucket, decoder if bucket == 0 else None)
        for bucket in range(len(edges) - 1)
    ]
    width = (edges[1:] - edges[:-1]).double()
    vb_mean = torch.stack([bucket_sum for bucket_sum, _ in per_bucket]) / width
    vb_std_error = torch.stack([variance for _, variance in per_bucket]).sqrt() / width
    return vb_mean, vb_std_error, kl_sum, (float(total), float(total_variance.sqrt()))


def estimate_bound(
    samples: BoundSamples, edges: torch.Tensor, timesteps: int, on_grid: bool
) -> tuple[VariationalBound, torch.Tensor, torch.Tensor]:
    """The bound from the loss analysis's per-sample values, and per bucket its mean term per
    timestep with its standard error (:func:`bound_by_bucket`)."""
    vb_mean, vb_std_error, kl_sum, (total, std_error) = bound_by_bucket(samples, edges)
    bound = VariationalBound(
        total_bpd=total,
        std_error=std_error,
        prior_bpd=float(samples.prior.mean()),
        decoder_bpd=float(samples.decoder.mean()),
        kl_bpd=float(kl_sum),
        num_images=len(samples.t),
        timesteps=timesteps,
        on_8bit_grid=on_grid,
    )
    return bound, vb_mean, vb_std_error


@torch.inference_mode()
def exact_bound(
    diffusion: DiffusionProcess, images: torch.Tensor, batch_size: int, generator: torch.Generator
) -> torch.Tensor:
    """Σ_t L_t + L_T of each image with every t evaluated once, each with its own noise; bits/dim.

    T forward passes per image: a check of the stratified estimate, not the way to get it.
    """
    timesteps = diffusion.timesteps
    image_index = torch.arange(len(images)).repeat_interleave(timesteps)
    t = torch.arange(timesteps).repeat(len(images))
    total = prior_bpd(diffusion, images).cpu()
    for start in range(0, len(t), batch_size):
        chunk = slice(start, start + batch_size)
        x_0, t_chunk = images[image_index[chunk]], t[chunk].to(images.device)
        noise = torch.randn(x_0.shape, generator=generator).to(images.device)
        x_t, _ = diffusion.add_noise(x_0, t_chunk, noise=noise)
        _, x0_predicted, log_variance = predicted(diffusion, x_t, t_chunk)
        terms = bound_terms_bpd(diffusion, x_0, x_t, t_chunk, x0_predicted, log_variance).cpu()
        total.index_add_(0, image_index[chunk], terms)
    return total


def compare_with_exact(estimate: tuple[float, float], exact: torch.Tensor) -> ExactCheck:
    total, std_error = estimate
    exact_std_error = float(exact.std() / math.sqrt(len(exact))) if len(exact) > 1 else math.nan
    return ExactCheck(
        num_images=len(exact),
        total_bpd=float(exact.mean()),
        std_error=exact_std_error,
        difference=total - float(exact.mean()),
        combined_std_error=math.hypot(std_error, exact_std_error),
    )
