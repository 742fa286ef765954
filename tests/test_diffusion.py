"""The noise schedules, the forward process and the DDPM / DDIM samplers against closed forms.

The sampler tests use Gaussian data x0 ~ N(μ, s²) per pixel, for which the optimal ε-predictor is
known exactly and is affine in x_t:

    ε*(x_t, t) = √(1-ᾱ_t) (x_t - √ᾱ_t μ) / (ᾱ_t s² + 1 - ᾱ_t),

and so are the optimal x_0- and v-predictors derived from it. Every sampler step is then an affine
map plus Gaussian noise, so the exact distribution of what a correct sampler returns can be
computed independently in float64 (from the papers' equations, not from the package's code) and
compared with what the package returns, for every schedule and parametrization.
"""

from __future__ import annotations

import dataclasses
import math
from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_diagnostics import DiagnosticsError, DiffusionProcess
from diffusion_diagnostics.diffusion import SamplingOptions, ddim_timesteps, trailing_timesteps

from doubles import StandIn, one_error_line, reference_betas, reference_schedule, tiny_unet

MU, SD = 0.3, 0.5
# The workflow's default schedule: with it ᾱ_T ≈ 4e-5, so x_T ~ N(0, I) really is the prior.
T_GAUSS, BETA_START, BETA_END = 1000, 1e-4, 0.02
N_SAMPLES, SAMPLE_SHAPE = 4096, (1, 4, 4)  # 65,536 independent scalars per sampler run
Z = 5.0  # tolerance in standard errors for every statistical check


def reference_trailing(timesteps: int, num_steps: int) -> list[int]:
    return [round(timesteps - i * timesteps / num_steps) - 1 for i in range(num_steps)]


def broadcast(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return values[t].reshape(-1, *([1] * (ndim - 1)))


class GaussianOptimalEps(StandIn):
    """The exact E[ε | x_t] for data x0 ~ N(μ, s²) i.i.d. per pixel, evaluated in float64, and
    output as the prediction type asks: ε itself, x_0 = (x_t - √(1-ᾱ) ε) / √ᾱ or
    v = √ᾱ ε - √(1-ᾱ) x_0 (the optima of those objectives, since they are affine in ε)."""

    def __init__(self, mu: float, sd: float, alpha_bars: np.ndarray, prediction_type: str = "epsilon"):
        super().__init__()
        self.mu, self.sd, self.prediction_type = mu, sd, prediction_type
        self.register_buffer("alpha_bars", torch.from_numpy(alpha_bars))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = broadcast(self.alpha_bars, t, x_t.ndim)
        x = x_t.double()
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * self.mu) / (ab * self.sd**2 + 1 - ab)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        output = {"epsilon": eps, "sample": x0, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0}
        return output[self.prediction_type].to(x_t.dtype)

    def coefficients(self, t: int) -> tuple[float, float]:
        """ε* = A x_t + B at timestep t."""
        ab = float(self.alpha_bars[t])
        a = math.sqrt(1 - ab) / (ab * self.sd**2 + 1 - ab)
        return a, -a * math.sqrt(ab) * self.mu


def gaussian_diffusion(
    timesteps=T_GAUSS,
    beta_start=BETA_START,
    beta_end=BETA_END,
    schedule="linear",
    prediction_type="epsilon",
    variance_type="fixed_small",
) -> DiffusionProcess:
    ref = reference_schedule(timesteps, beta_start, beta_end, schedule)
    model = GaussianOptimalEps(MU, SD, ref["alpha_bars"], prediction_type)
    return DiffusionProcess(
        model,
        timesteps,
        beta_start,
        beta_end,
        beta_schedule=schedule,
        prediction_type=prediction_type,
        variance_type=variance_type,
        clip_sample=False,
        sample_shape=SAMPLE_SHAPE,
    )


def exact_chain(
    model: GaussianOptimalEps,
    ref: dict,
    sampler: str,
    num_steps: int,
    eta: float,
    variance: str = "fixed_small",
):
    """x_0 = a x_T + b + (noise of variance v) for the sampler, from DDPM eq. 11 / DDIM eq. 12;
    DDPM's σ_t² is β̃_t (fixed_small) or β_t (fixed_large), DDPM section 3.2."""
    ab_all, betas = ref["alpha_bars"], ref["betas"]
    a, b, v = 1.0, 0.0, 0.0

    def compose(gain, shift, variance):
        nonlocal a, b, v
        a, b, v = gain * a, gain * b + shift, gain * gain * v + variance

    if sampler == "ddpm":
        for t in range(len(betas) - 1, -1, -1):
            ea, eb = model.coefficients(t)
            ab, beta, abp = ab_all[t], betas[t], ref["alpha_bars_prev"][t]
            # x_{t-1} = (x_t - β_t / √(1-ᾱ_t) ε) / √α_t + σ_t z                         (DDPM eq. 11)
            k = beta / math.sqrt(1 - ab)
            sigma2 = (1 - abp) / (1 - ab) * beta if variance == "fixed_small" else beta
            compose(
                (1 - k * ea) / math.sqrt(1 - beta), -k * eb / math.sqrt(1 - beta), sigma2 if t > 0 else 0.0
            )
        return a, b, v
    steps = reference_trailing(len(betas), num_steps)
    for i, t in enumerate(steps):
        ea, eb = model.coefficients(t)
        ab = ab_all[t]
        ap = ab_all[steps[i + 1]] if i + 1 < len(steps) else 1.0
        sigma2 = eta**2 * (1 - ap) / (1 - ab) * (1 - ab / ap)  # DDIM eq. 16
        # x0_hat = p x + q; x_prev = √ᾱ_prev x0_hat + √(1-ᾱ_prev-σ²) ε + σ z            (DDIM eq. 12)
        p, q = (1 - math.sqrt(1 - ab) * ea) / math.sqrt(ab), -math.sqrt(1 - ab) * eb / math.sqrt(ab)
        d = math.sqrt(max(1 - ap - sigma2, 0.0))
        compose(math.sqrt(ap) * p + d * ea, math.sqrt(ap) * q + d * eb, sigma2)
    return a, b, v


def exact_inversion(model: GaussianOptimalEps, ref: dict, num_steps: int) -> tuple[float, float]:
    """x_T = P x_0 + Q for DDIM inversion (eq. 13 run forwards, ε at the target timestep)."""
    gain, shift, current = 1.0, 0.0, 1.0
    for t in reference_trailing(len(ref["betas"]), num_steps)[::-1]:
        ea, eb = model.coefficients(t)
        nxt = ref["alpha_bars"][t]
        g = (1 - math.sqrt(1 - current) * ea) / math.sqrt(current) * math.sqrt(nxt) + math.sqrt(1 - nxt) * ea
        s = -math.sqrt(1 - current) * eb / math.sqrt(current) * math.sqrt(nxt) + math.sqrt(1 - nxt) * eb
        gain, shift, current = g * gain, g * shift + s, nxt
    return gain, shift


def assert_moments(x: torch.Tensor, mean: float, var: float, mean_slack: float = 0.0, var_slack: float = 0.0):
    """Sample mean and variance of x (all entries i.i.d.) within Z standard errors (+ slack)."""
    n = x.numel()
    x = x.double()
    mean_tol = Z * math.sqrt(var / n) + mean_slack
    var_tol = Z * var * math.sqrt(2 / (n - 1)) + var_slack
    assert abs(x.mean().item() - mean) < mean_tol, (x.mean().item(), mean, mean_tol)
    assert abs(x.var().item() - var) < var_tol, (x.var().item(), var, var_tol)


# --- schedule ------------------------------------------------------------------------------------


SCHEDULES = [
    (1000, 1e-4, 0.02, "linear"),
    (20, 1e-3, 0.2, "linear"),
    (1000, 1e-4, 0.02, "scaled_linear"),
    (1000, 1e-4, 0.02, "squaredcos_cap_v2"),
    (50, 1e-4, 0.02, "squaredcos_cap_v2"),
]


@pytest.mark.parametrize(("timesteps", "beta_start", "beta_end", "schedule"), SCHEDULES)
def test_schedule_matches_closed_form(timesteps, beta_start, beta_end, schedule):
    diffusion = DiffusionProcess(nn.Identity(), timesteps, beta_start, beta_end, beta_schedule=schedule)
    ref = reference_schedule(timesteps, beta_start, beta_end, schedule)
    betas, alpha_bars, prev = ref["betas"], ref["alpha_bars"], ref["alpha_bars_prev"]

    np.testing.assert_allclose(diffusion.betas.numpy(), betas, rtol=1e-6)
    np.testing.assert_allclose(diffusion.alpha_bars.numpy(), alpha_bars, rtol=1e-6)
    np.testing.assert_allclose(diffusion.sqrt_alpha_bars.numpy(), np.sqrt(alpha_bars), rtol=1e-6)
    np.testing.assert_allclose(
        diffusion.sqrt_one_minus_alpha_bars.numpy(), np.sqrt(1 - alpha_bars), rtol=1e-6
    )
    posterior = betas * (1 - prev) / (1 - alpha_bars)
    np.testing.assert_allclose(diffusion.posterior_variance.numpy(), posterior, rtol=1e-6, atol=0)
    assert diffusion.posterior_variance[0].item() == 0.0
    assert (diffusion.posterior_variance[1:] > 0).all()
    np.testing.assert_allclose(diffusion.alphas_cumprod.numpy(), alpha_bars, rtol=1e-6)
    rebuilt = DiffusionProcess(nn.Identity(), **diffusion.schedule_config())
    assert rebuilt.schedule_config() == diffusion.schedule_config()
    assert torch.equal(rebuilt.betas, diffusion.betas)


def test_trained_betas_are_the_schedule():
    betas = reference_betas(30, 1e-3, 0.1, "scaled_linear")
    diffusion = DiffusionProcess(nn.Identity(), 30, trained_betas=betas.tolist())
    np.testing.assert_allclose(diffusion.betas.numpy(), betas, rtol=1e-6)
    assert diffusion.schedule_config()["trained_betas"] == pytest.approx(betas.tolist())
    with pytest.raises(DiagnosticsError, match="trained_betas holds 29 values"):
        DiffusionProcess(nn.Identity(), 30, trained_betas=betas[:-1].tolist())


@pytest.mark.parametrize(
    ("key", "value"),
    [("beta_schedule", "sigmoid"), ("prediction_type", "noise"), ("variance_type", "fixed_medium")],
)
def test_unknown_schedule_parametrization_or_variance_is_one_line(key, value):
    one_error_line(
        lambda: DiffusionProcess(nn.Identity(), 20, **{key: value}),
        f"{key} '{value}' is not supported; use one of",
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_parametrization_gives_back_the_true_eps_and_x0(prediction_type):
    """An oracle that outputs the true ε, v or x_0 of a noised image: eps_and_x0 recovers both ε
    and x_0 from it, and the training target is exactly that output."""
    diffusion = DiffusionProcess(nn.Identity(), 100, prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 5, 5, generator=generator) * 2 - 1
    t = torch.tensor([0, 10, 60, 99])
    x_t, noise = diffusion.add_noise(x0, t, generator=generator)
    ab = torch.from_numpy(reference_schedule(100, 1e-4, 0.02)["alpha_bars"])[t].reshape(-1, 1, 1, 1).float()
    truth = {"epsilon": noise, "sample": x0, "v_prediction": ab.sqrt() * noise - (1 - ab).sqrt() * x0}
    target = diffusion.training_target(x0, noise, t)
    torch.testing.assert_close(target, truth[prediction_type], rtol=1e-5, atol=1e-5)
    eps, x0_hat = diffusion.eps_and_x0(x_t, t, target)
    # ε from x_0 divides by √(1-ᾱ_0) = 0.01, which magnifies float32 rounding there.
    torch.testing.assert_close(eps, noise, rtol=0, atol=1e-3)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-4)


# --- forward process -----------------------------------------------------------------------------


def test_add_noise_is_eq4_for_given_noise():
    diffusion = DiffusionProcess(nn.Identity(), 100)
    ref = reference_schedule(100, 1e-4, 0.02)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 1, 3, 3, generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 1, 37, 98, 99])

    x_t, returned = diffusion.add_noise(x0, t, noise=noise)

    ab = torch.from_numpy(ref["alpha_bars"])[t].reshape(-1, 1, 1, 1)
    expected = ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()
    torch.testing.assert_close(x_t.double(), expected, rtol=1e-6, atol=1e-6)
    assert returned is noise


def test_add_noise_draws_from_q_xt_given_x0():
    diffusion = DiffusionProcess(nn.Identity(), 100)
    ab = reference_schedule(100, 1e-4, 0.02)["alpha_bars"]
    t = torch.tensor([0, 50, 99])
    x0 = torch.full((3, 200_000), 0.7)

    x_t, noise = diffusion.add_noise(x0, t, generator=torch.Generator().manual_seed(1))

    for row, step in enumerate(t.tolist()):
        assert_moments(x_t[row], math.sqrt(ab[step]) * 0.7, 1 - ab[step])
    assert_moments(noise, 0.0, 1.0)
    again, _ = diffusion.add_noise(x0, t, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x_t, again)


# --- single steps --------------------------------------------------------------------------------


class KnownEps(StandIn):
    """ε̂(x, t) = 0.4 x + 0.01 t - 0.3: depends on t, so a wrong t would show."""

    def forward(self, x, t):
        return 0.4 * x + 0.01 * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) - 0.3


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize(("t", "t_prev"), [(60, 40), (99, 0), (5, None)])
@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
def test_ddim_step_is_eq12(t, t_prev, eta, clip):
    T = 100
    diffusion = DiffusionProcess(KnownEps(), T)
    ref = reference_schedule(T, 1e-4, 0.02)
    x_t = 1.5 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ab = ref["alpha_bars"][t]
    ap = 1.0 if t_prev is None else ref["alpha_bars"][t_prev]
    alpha_bar_prev = torch.ones(()) if t_prev is None else diffusion.alpha_bars[t_prev]

    out = diffusion.ddim_step(
        x_t, t, alpha_bar_prev, eta, generator=torch.Generator().manual_seed(7), clip_x0=clip
    )

    x = x_t.double()
    eps = 0.4 * x + 0.01 * t - 0.3
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    if clip:
        x0 = x0.clamp(-1, 1)
    sigma = eta * math.sqrt((1 - ap) / (1 - ab) * (1 - ab / ap))
    expected = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma**2) * eps
    if eta > 0:
        same_draw = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).double()
        expected = expected + sigma * same_draw
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    if clip:
        assert (x0.abs() == 1).any(), "the test should exercise clipping"
    if eta > 0 and t_prev is not None:
        other = diffusion.ddim_step(
            x_t, t, alpha_bar_prev, eta, generator=torch.Generator().manual_seed(8), clip_x0=clip
        )
        assert not torch.allclose(out, other), "the noise must come from the given generator"


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t", [0, 1, 50, 99])
def test_ddpm_step_is_eq11(t, variance):
    T = 100
    diffusion = DiffusionProcess(KnownEps(), T, clip_sample=False, variance_type=variance)
    ref = reference_schedule(T, 1e-4, 0.02)
    x_t = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    out = diffusion.ddpm_step(x_t, t, generator=torch.Generator().manual_seed(3))

    beta, ab, abp = ref["betas"][t], ref["alpha_bars"][t], ref["alpha_bars_prev"][t]
    x = x_t.double()
    eps = 0.4 * x + 0.01 * t - 0.3
    expected = (x - beta / math.sqrt(1 - ab) * eps) / math.sqrt(1 - beta)
    if t > 0:
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).double()
        sigma2 = (1 - abp) / (1 - ab) * beta if variance == "fixed_small" else beta
        expected = expected + math.sqrt(sigma2) * z
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    # The same step in the form a CUDA graph replays it (a one-element tensor t) adds no noise at 0.
    as_tensor = diffusion.ddpm_step(x_t, torch.tensor([t]), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(as_tensor, out, rtol=0, atol=1e-6)


# --- timesteps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timesteps", "num_steps"), [(1000, 50), (1000, 1000), (20, 7), (10, 1), (100, 3), (7, 6)]
)
def test_trailing_timesteps(timesteps, num_steps):
    steps = trailing_timesteps(timesteps, num_steps)
    assert len(steps) == num_steps
    assert steps[0] == timesteps - 1
    assert all(a > b for a, b in pairwise(steps))
    assert steps[-1] >= 0
    gaps = {a - b for a, b in pairwise(steps)}
    assert gaps <= {timesteps // num_steps, math.ceil(timesteps / num_steps)}
    if num_steps == timesteps:
        assert steps == list(range(timesteps - 1, -1, -1))


def test_trailing_timesteps_values():
    """The "trailing" spacing of Lin et al. 2024 (diffusers' timestep_spacing="trailing"):
    round(T - i T / S) - 1."""
    assert trailing_timesteps(20, 7) == [19, 16, 13, 10, 8, 5, 2]
    assert trailing_timesteps(1000, 50) == list(range(999, 0, -20))
    assert trailing_timesteps(10, 4) == [9, 7, 4, 1]  # round half to even, as numpy


def numpy_timesteps(timesteps: int, num_steps: int, spacing: str, offset: int = 0) -> list[int]:
    """diffusers' timestep_spacing, written from its definition (Lin et al. 2024, table 2)."""
    if spacing == "linspace":
        return np.linspace(0, timesteps - 1, num_steps).round()[::-1].astype(int).tolist()
    if spacing == "leading":
        return ((np.arange(num_steps) * (timesteps // num_steps)).round()[::-1] + offset).astype(int).tolist()
    return (np.round(np.arange(timesteps, 0, -timesteps / num_steps)).astype(int) - 1).tolist()


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize(
    ("timesteps", "num_steps"), [(1000, 50), (1000, 30), (20, 7), (10, 4), (7, 7), (9, 1)]
)
def test_timestep_spacings_are_diffusers(spacing, timesteps, num_steps):
    offset = 1 if spacing == "leading" and timesteps % num_steps else 0
    steps = ddim_timesteps(timesteps, num_steps, spacing, offset)
    assert steps == numpy_timesteps(timesteps, num_steps, spacing, offset)
    assert all(a > b for a, b in pairwise(steps)) and 0 <= steps[-1] and steps[0] < timesteps


def test_leading_spacing_past_the_schedule_is_one_line():
    one_error_line(lambda: ddim_timesteps(20, 4, "leading", 5), "steps_offset 5 puts the first")
    one_error_line(
        lambda: SamplingOptions(timestep_spacing="even"), "timestep_spacing 'even' is not supported"
    )


@pytest.mark.parametrize("num_steps", [0, -1, 21])
def test_trailing_timesteps_rejects_bad_step_counts(num_steps):
    with pytest.raises(DiagnosticsError, match="num_steps"):
        trailing_timesteps(20, num_steps)
    diffusion = DiffusionProcess(KnownEps(), 20)
    with pytest.raises(DiagnosticsError, match="num_steps"):
        diffusion.sample_ddim(torch.zeros(1, 1, 4, 4), num_steps)


# --- samplers on Gaussian data -------------------------------------------------------------------


SAMPLERS = [
    pytest.param("ddpm", T_GAUSS, 1.0, id="ddpm"),
    pytest.param("ddim", T_GAUSS, 0.0, id="ddim-eta0-S=T"),
    pytest.param("ddim", 250, 0.0, id="ddim-eta0-S=250"),
    pytest.param("ddim", T_GAUSS, 1.0, id="ddim-eta1-S=T"),
    pytest.param("ddim", 250, 1.0, id="ddim-eta1-S=250"),
]


# Each schedule × parametrization beyond the default one, with a stochastic and a deterministic sampler.
OTHER_PROCESSES = [
    pytest.param(
        schedule,
        prediction,
        variance,
        sampler,
        num_steps,
        eta,
        id=f"{schedule}-{prediction}-{variance}-{sampler}",
    )
    for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2")
    for prediction in ("epsilon", "v_prediction", "sample")
    for variance, sampler, num_steps, eta in (
        ("fixed_small", "ddpm", T_GAUSS, 1.0),
        ("fixed_small", "ddim", 250, 0.0),
    )
    if (schedule, prediction) != ("linear", "epsilon")
] + [
    pytest.param(
        "linear", "epsilon", "fixed_large", "ddpm", T_GAUSS, 1.0, id="linear-epsilon-fixed_large-ddpm"
    )
]


@pytest.mark.parametrize(
    ("schedule", "prediction", "variance", "sampler", "num_steps", "eta"), OTHER_PROCESSES
)
def test_every_schedule_and_parametrization_samples_the_exact_chain(
    schedule, prediction, variance, sampler, num_steps, eta
):
    """The exact distribution of the sampler's output, from the ε chain alone: the network speaks
    another parametrization, but the process must read it back to the same ε and x_0."""
    diffusion = gaussian_diffusion(schedule=schedule, prediction_type=prediction, variance_type=variance)
    ref = reference_schedule(T_GAUSS, BETA_START, BETA_END, schedule)
    x_T = torch.randn(N_SAMPLES, *SAMPLE_SHAPE, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    if sampler == "ddpm":
        x0 = diffusion.sample(x_T, generator=generator)
    else:
        x0 = diffusion.sample_ddim(x_T, num_steps, eta, generator=generator)
    a, b, v = exact_chain(
        GaussianOptimalEps(MU, SD, ref["alpha_bars"]), ref, sampler, num_steps, eta, variance
    )
    assert_moments(x0, b, a * a + v)
    if eta == 0:
        torch.testing.assert_close(x0.double(), a * x_T.double() + b, rtol=0, atol=2e-4)
    # Near the data whatever the schedule; scaled_linear ends at ᾱ_T = 7e-4, a prior a little off N(0, I).
    assert_moments(x0, MU, SD**2, mean_slack=0.01, var_slack=0.08 * SD**2)


@pytest.mark.parametrize(("sampler", "num_steps", "eta"), SAMPLERS)
def test_samplers_reproduce_gaussian_data(sampler, num_steps, eta):
    diffusion = gaussian_diffusion()
    ref = reference_schedule(T_GAUSS, BETA_START, BETA_END)
    x_T = torch.randn(N_SAMPLES, *SAMPLE_SHAPE, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    if sampler == "ddpm":
        x0 = diffusion.sample(x_T, generator=generator)
    else:
        x0 = diffusion.sample_ddim(x_T, num_steps, eta, generator=generator)
    assert x0.shape == x_T.shape and x0.dtype == torch.float32

    a, b, v = exact_chain(diffusion.model, ref, sampler, num_steps, eta)
    # 1. Exactly the distribution that a correct implementation of the sampler produces.
    assert_moments(x0, b, a * a + v)
    if eta == 0:
        # Deterministic: x_0 is this affine function of x_T, element by element.
        torch.testing.assert_close(x0.double(), a * x_T.double() + b, rtol=0, atol=1e-4)
    # 2. That distribution is the data's, up to the sampler's discretisation error: with finite
    #    steps the reverse variance β̃_t (or the DDIM ODE step) makes the variance a few % low
    #    (the exact figure is |a² + v - s²| / s², between 0.6 % and 5.6 % for these five).
    assert abs(b - MU) < 0.005 and abs(a * a + v - SD**2) < 0.06 * SD**2
    assert_moments(x0, MU, SD**2, mean_slack=0.005, var_slack=0.06 * SD**2)


def test_ddim_with_eta1_and_all_steps_is_ddpm():
    """The docstring's claim: S = T, η = 1 is ancestral DDPM with σ² = β̃, draw for draw."""
    diffusion = gaussian_diffusion(200, 1e-4, 0.05)
    x_T = torch.randn(64, *SAMPLE_SHAPE, generator=torch.Generator().manual_seed(0))
    ddpm = diffusion.sample(x_T, generator=torch.Generator().manual_seed(5))
    ddim = diffusion.sample_ddim(x_T, 200, eta=1.0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ddim, ddpm, rtol=0, atol=1e-4)


def test_ddim_eta0_is_deterministic_with_tiny_unet():
    diffusion = DiffusionProcess(tiny_unet(), timesteps=20, beta_start=1e-3, beta_end=0.2)
    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    original = x_T.clone()
    assert diffusion.model(x_T, torch.tensor([19, 3])).abs().max() > 1e-3, "the network must not be trivial"

    for num_steps in (5, 20):
        first = diffusion.sample_ddim(x_T, num_steps)
        second = diffusion.sample_ddim(x_T, num_steps)
        assert torch.equal(first, second)
        assert torch.isfinite(first).all()
    assert torch.equal(x_T, original), "sampling must not modify x_T"
    noisy = [
        diffusion.sample_ddim(x_T, 5, eta=1.0, generator=torch.Generator().manual_seed(s)) for s in (0, 1)
    ]
    assert not torch.allclose(noisy[0], noisy[1])


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_sample_ddim_is_its_public_steps_one_after_another(eta):
    """The loop's coefficients, computed once for all steps, are those ddim_step computes per step.
    Each step goes from t to t - T // S, as diffusers' DDIMScheduler does: with S = 7 that is not
    always the next timestep visited (19 -> 17, then 16 -> 14, …), and the last step (2 -> 0)
    ends at ᾱ_0, not at 1."""
    diffusion = DiffusionProcess(tiny_unet(), timesteps=20, beta_start=1e-3, beta_end=0.2)
    x_T = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    sampled = diffusion.sample_ddim(x_T, 7, eta, generator=torch.Generator().manual_seed(1))

    steps, x, generator = trailing_timesteps(20, 7), x_T, torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for t in steps:
            alpha_bar_prev = diffusion.alpha_bars[t - 2] if t - 2 >= 0 else torch.ones(())
            x = diffusion.ddim_step(x, t, alpha_bar_prev, eta, generator)
    assert torch.equal(sampled, x)


def test_unet_output_does_not_depend_on_autograd_or_layout():
    """In-place activations without autograd, out-of-place with it: the same numbers; and the
    channels-last network hands back an ordinary contiguous tensor."""
    model = tiny_unet()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 5, 10, 19])
    with_grad = model(x, t)
    with torch.inference_mode():
        without = model(x, t)
    assert with_grad.requires_grad and without.is_contiguous()
    assert torch.equal(with_grad.detach(), without)


def test_group_norm_normalises_in_float32_under_bf16_autocast(monkeypatch):
    """Under autocast the activations reach the UNet's norms in bf16; each norm hands float32 to
    the group_norm kernel (bf16 channels-last GroupNorm is the slow CPU kernel) and gives its
    caller the dtype it was given."""
    seen = []
    group_norm = F.group_norm

    def recording(x, *args, **kwargs):
        seen.append(x.dtype)
        return group_norm(x, *args, **kwargs)

    monkeypatch.setattr(F, "group_norm", recording)
    model = tiny_unet()
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for norm in norms:
        norm.register_forward_hook(
            lambda module, inputs, out: outputs.setdefault(module, []).append((inputs[0].dtype, out.dtype))
        )
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, torch.tensor([3, 7]))
    assert seen == [torch.float32] * len(norms)
    assert any(dtypes == [(torch.bfloat16, torch.bfloat16)] for dtypes in outputs.values())
    assert all(given == returned for dtypes in outputs.values() for given, returned in dtypes)


def test_bf16_autocast_runs_the_network_in_bf16_and_the_sampler_in_float32():
    """precision: bfloat16. The network's convolutions compute in bf16, so ε moves by bf16's
    rounding (a few per cent of its scale, not more); ε and every returned image stay float32.
    Unset, the convolutions stay float32."""
    model = tiny_unet()
    diffusion = DiffusionProcess(model, timesteps=20, beta_start=1e-3, beta_end=0.2)
    conv_dtypes = set()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda _module, _inputs, out: conv_dtypes.add(out.dtype))
    x_T = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([19, 10, 3, 0])
    with torch.inference_mode():
        eps_float32 = diffusion._network(x_T, t)
        reference = diffusion.sample_ddim(x_T, 5)
    assert conv_dtypes == {torch.float32}

    conv_dtypes.clear()
    with torch.inference_mode():
        eps_bf16 = diffusion._network(x_T, t, torch.bfloat16)
    assert conv_dtypes == {torch.bfloat16}
    assert eps_bf16.dtype == torch.float32
    error = (eps_bf16 - eps_float32).abs().max().item()
    assert 0 < error < 0.05 * eps_float32.abs().max().item()

    bf16 = SamplingOptions(precision="bfloat16")
    outputs = [
        diffusion.sample_ddim(x_T, 5, options=bf16),
        diffusion.sample(x_T, generator=torch.Generator().manual_seed(1), options=bf16),
        diffusion.ddim_invert(x_T.clamp(-1, 1), 5, options=bf16),
    ]
    assert all(out.dtype == torch.float32 and torch.isfinite(out).all() for out in outputs)
    assert 0 < (outputs[0] - reference).abs().max() < 0.1


@pytest.mark.parametrize("num_steps", [T_GAUSS, 250])
def test_ddim_inversion_round_trip(num_steps):
    diffusion = gaussian_diffusion()
    ref = reference_schedule(T_GAUSS, BETA_START, BETA_END)
    x0 = MU + SD * torch.randn(2048, *SAMPLE_SHAPE, generator=torch.Generator().manual_seed(2))

    latents = diffusion.ddim_invert(x0, num_steps)
    reconstruction = diffusion.sample_ddim(latents, num_steps)

    gain, shift = exact_inversion(diffusion.model, ref, num_steps)
    torch.testing.assert_close(latents.double(), gain * x0.double() + shift, rtol=0, atol=1e-4)
    # The encoder maps the data to (nearly) the prior: unit variance, zero mean.
    assert abs(latents.var().item() - 1) < 0.05
    assert abs(latents.mean().item()) < 0.05
    relative_rmse = ((reconstruction - x0).pow(2).mean() / x0.pow(2).mean()).sqrt().item()
    # Exact arithmetic gives 0.0027 (S = 1000) and 0.0108 (S = 250): the DDIM ODE discretisation.
    assert relative_rmse < (1e-2 if num_steps == T_GAUSS else 2e-2)


def test_shared_noise_gives_a_group_one_noise_path():
    """Common random numbers: with the same per-step noise the affine sampler's outputs differ by
    exactly a·(x_T,i - x_T,j); with independent noise by that plus noise of variance 2v."""
    diffusion = gaussian_diffusion(200, 1e-4, 0.05)
    ref = reference_schedule(200, 1e-4, 0.05)
    a, _, v = exact_chain(diffusion.model, ref, "ddpm", 200, 1.0)
    assert v > 0.01, "the sampler must add enough noise for the comparison to mean something"
    x_T = torch.randn(6, *SAMPLE_SHAPE, generator=torch.Generator().manual_seed(0))

    shared = diffusion.sample(x_T, generator=torch.Generator().manual_seed(1), shared_noise=3).double()
    for group in (slice(0, 3), slice(3, 6)):
        out, start = shared[group], x_T[group].double()
        torch.testing.assert_close(out - out[0], a * (start - start[0]), rtol=0, atol=1e-4)
    independent = diffusion.sample(x_T, generator=torch.Generator().manual_seed(1)).double()
    gap = (independent[1] - independent[0]) - a * (x_T[1] - x_T[0]).double()
    assert gap.abs().max() > 0.05

    # One image per group is the plain sampler, draw for draw.
    single = diffusion.sample(x_T, generator=torch.Generator().manual_seed(1), shared_noise=1)
    torch.testing.assert_close(single.double(), independent, rtol=0, atol=0)


@pytest.mark.parametrize("shared", [0, 4])
def test_shared_noise_must_divide_the_batch(shared):
    diffusion = gaussian_diffusion(20, 1e-3, 0.2)
    with pytest.raises(DiagnosticsError, match="shared_noise"):
        diffusion.sample(torch.zeros(6, *SAMPLE_SHAPE), shared_noise=shared)


def test_sampling_options_override_the_models_variance_and_clipping():
    """A model's variance_type and clip_sample are only its defaults: options given per call win."""
    x_T = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def ddpm(variance_type, clip, options=None):
        diffusion = DiffusionProcess(
            tiny_unet(), 20, 1e-3, 0.2, variance_type=variance_type, clip_sample=clip
        )
        return diffusion.sample(x_T, generator=torch.Generator().manual_seed(1), options=options)

    large_unclipped = ddpm("fixed_large", False)
    overridden = ddpm("fixed_small", True, SamplingOptions(variance_type="fixed_large", clip_x0=False))
    assert torch.equal(overridden, large_unclipped)
    assert not torch.equal(ddpm("fixed_small", True), large_unclipped)


def test_a_rebuilt_process_shares_the_network_with_other_settings():
    diffusion = DiffusionProcess(tiny_unet(), 20, 1e-3, 0.2, sample_shape=(1, 28, 28))
    other = diffusion.rebuilt(prediction_type="v_prediction")
    assert other.model is diffusion.model and other.sample_shape == diffusion.sample_shape
    assert other.config == dataclasses.replace(diffusion.config, prediction_type="v_prediction")
    torch.testing.assert_close(other.alphas_cumprod, diffusion.alphas_cumprod)
    wrapped = nn.Sequential()
    around = diffusion.rebuilt(wrapped)
    assert around.model is wrapped and around.config == diffusion.config
