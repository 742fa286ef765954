"""The variational bound (bound.py) and the richer loss table (analysis.timestep_loss_table),
against closed forms computed here from the schedule alone, in float64 numpy and mpmath.

With constant images x_0 = c (a pixel level of the 8-bit grid), x_t = √ᾱ_t c + √(1-ᾱ_t) ε
tells a model the noise exactly, so ``KnownError`` can return its target (ε, v or x_0) plus a
chosen δ(t). Then every error and every term of the bound is a known number:

- ε-MSE = (error in ε)², x̂_0-MSE = ε-MSE · (1-ᾱ)/ᾱ = ε-MSE / SNR, v-MSE = ε-MSE / ᾱ;
- L_t = KL(N(μ̃, β̃_t) ‖ N(μ_θ, σ_t²)) = ½(log σ_t²/β̃_t + β̃_t/σ_t² - 1) + w_t · (error in ε)² with
  w_t = β_t² / (2 σ_t² α_t (1-ᾱ_t)) (DDPM eq. 12), per dimension, in nats;
- L_0 = -log of the N(x̂_0, β̃_1) mass of the pixel's bin; L_T = KL(N(√ᾱ c, 1-ᾱ) ‖ N(0, 1)).
"""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest
import torch
from torch import nn

from diffusion_diagnostics import DiffusionProcess, timestep_loss_statistics
from diffusion_diagnostics.analysis import timestep_loss_table
from diffusion_diagnostics.bound import (
    decoder_nll_bpd,
    discretized_gaussian_log_likelihood,
    exact_bound,
    kl_term_bpd,
    prior_bpd,
)

from doubles import StandIn, ZeroEps, one_error_line, reference_schedule

T, BETA_START, BETA_END = 10, 1e-3, 0.2
LEVEL = 128  # the pixel level of the constant images: x = 2·128/255 - 1 = 1/255
PIXEL = 2 * LEVEL / 255 - 1
SHAPE = (1, 2, 2)
LN2 = math.log(2)
SCHEDULE = reference_schedule(T, BETA_START, BETA_END)  # the process make_diffusion builds, in float64


def reverse_variance(variance_type: str, timesteps: int = T) -> np.ndarray:
    """σ_t²: β̃_1 at t = 0 for both, then β̃_t or β_t (improved-diffusion's convention)."""
    s = reference_schedule(timesteps, BETA_START, BETA_END)
    after = s["posterior_variance"][1:] if variance_type == "fixed_small" else s["betas"][1:]
    return np.append(s["posterior_variance"][1], after)


def expected_kl_bits(t: int, eps_error_sq: float, variance_type: str, timesteps: int = T) -> float:
    """L_t per dimension in bits for a model whose ε error has mean square ``eps_error_sq``."""
    s = reference_schedule(timesteps, BETA_START, BETA_END)
    sigma_sq, posterior = reverse_variance(variance_type, timesteps)[t], s["posterior_variance"][t]
    constant = 0.5 * (math.log(sigma_sq / posterior) + posterior / sigma_sq - 1)
    weight = s["betas"][t] ** 2 / (2 * sigma_sq * s["alphas"][t] * (1 - s["alpha_bars"][t]))
    return (constant + weight * eps_error_sq) / LN2


def bin_mass(level: int, mean: float, variance: float) -> mpmath.mpf:
    """The N(mean, variance) probability of the 8-bit bin of ``level``, in 50-digit arithmetic."""
    mpmath.mp.dps = 50
    std = mpmath.sqrt(variance)
    centre = mpmath.mpf(2 * level) / 255 - 1
    lower = -mpmath.inf if level == 0 else (centre - mpmath.mpf(1) / 255 - mean) / std
    upper = mpmath.inf if level == 255 else (centre + mpmath.mpf(1) / 255 - mean) / std
    if lower > 0:  # far above the mean Φ(upper) - Φ(lower) cancels to 0 even in 50 digits
        return (mpmath.erfc(lower / mpmath.sqrt(2)) - mpmath.erfc(upper / mpmath.sqrt(2))) / 2
    return mpmath.ncdf(upper) - mpmath.ncdf(lower)


def expected_decoder_bits(x0_predicted: float, timesteps: int = T) -> float:
    posterior_variance = reference_schedule(timesteps, BETA_START, BETA_END)["posterior_variance"]
    return float(-mpmath.log(bin_mass(LEVEL, x0_predicted, posterior_variance[1]))) / LN2


def expected_prior_bits(timesteps: int = T) -> float:
    alpha_bar = reference_schedule(timesteps, BETA_START, BETA_END)["alpha_bars"][-1]
    return 0.5 * (-math.log(1 - alpha_bar) + (1 - alpha_bar) + alpha_bar * PIXEL**2 - 1) / LN2


class KnownError(StandIn):
    """Returns the exact target of its prediction type for constant images x_0 = PIXEL, plus δ(t)."""

    def __init__(self, prediction_type: str, offset, timesteps: int = T):
        super().__init__()
        alpha_bar = torch.from_numpy(reference_schedule(timesteps, BETA_START, BETA_END)["alpha_bars"])
        self.register_buffer("a", alpha_bar.sqrt())
        self.register_buffer("s", (1 - alpha_bar).sqrt())
        self.prediction_type, self.offset = prediction_type, offset
        self.calls = 0

    def forward(self, x_t, t):
        self.calls += len(t)
        shape = (-1, *([1] * (x_t.ndim - 1)))
        a, s = self.a[t].reshape(shape), self.s[t].reshape(shape)
        eps = (x_t.double() - a * PIXEL) / s
        target = {"epsilon": eps, "v_prediction": a * eps - s * PIXEL, "sample": torch.full_like(eps, PIXEL)}
        return (target[self.prediction_type] + self.offset(t).double().reshape(shape)).to(x_t.dtype)


def eps_error_of(prediction_type: str, delta: np.ndarray, timesteps: int = T) -> np.ndarray:
    """The error in ε of a model whose own prediction is off by δ: ε̂ = a v̂ + s x_t for v,
    (x_t - a x̂_0) / s for x_0."""
    alpha_bar = reference_schedule(timesteps, BETA_START, BETA_END)["alpha_bars"]
    a, s = np.sqrt(alpha_bar), np.sqrt(1 - alpha_bar)
    return {"epsilon": delta, "v_prediction": a * delta, "sample": -a * delta / s}[prediction_type]


def offset(t: torch.Tensor) -> torch.Tensor:
    return 0.05 * (t.double() + 1)


def make_diffusion(model: nn.Module, prediction_type="epsilon", variance_type="fixed_small", timesteps=T):
    return DiffusionProcess(
        model,
        timesteps,
        BETA_START,
        BETA_END,
        prediction_type=prediction_type,
        variance_type=variance_type,
        sample_shape=SHAPE,
    )


def constant_batches(sizes: list[int]) -> list[torch.Tensor]:
    return [torch.full((size, *SHAPE), PIXEL) for size in sizes]


# --- the terms, one at a time --------------------------------------------------------------------


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_kl_of_a_zero_model_is_ddpm_eq_12_with_the_noise_as_error(variance_type):
    """ε̂ = 0: the error in ε is -ε, so L_t = constant + w_t · mean(ε²) for each sample."""

    diffusion = make_diffusion(ZeroEps(), variance_type=variance_type)
    generator = torch.Generator().manual_seed(0)
    x_0 = torch.rand(12, *SHAPE, generator=generator) * 2 - 1
    t = torch.arange(1, T).repeat(2)[:12]
    x_t, noise = diffusion.add_noise(x_0, t, generator=generator)
    _, x0_predicted = diffusion.eps_and_x0(x_t, t, diffusion.model(x_t, t))

    terms = kl_term_bpd(diffusion, x_0, x_t, t, x0_predicted)
    noise_sq = noise.double().pow(2).flatten(1).mean(1)
    expected = [
        expected_kl_bits(int(step), float(sq), variance_type) for step, sq in zip(t, noise_sq, strict=True)
    ]
    np.testing.assert_allclose(terms.numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_kl_of_a_model_off_by_a_fixed_amount(variance_type):
    diffusion = make_diffusion(KnownError("epsilon", offset), variance_type=variance_type)
    t = torch.arange(1, T)
    x_0 = torch.full((len(t), *SHAPE), PIXEL)
    x_t, _ = diffusion.add_noise(x_0, t, generator=torch.Generator().manual_seed(1))
    _, x0_predicted = diffusion.eps_and_x0(x_t, t, diffusion.model(x_t, t))

    terms = kl_term_bpd(diffusion, x_0, x_t, t, x0_predicted)
    expected = [expected_kl_bits(int(step), float(offset(step)) ** 2, variance_type) for step in t]
    np.testing.assert_allclose(terms.numpy(), expected, rtol=1e-4)


def test_fixed_large_costs_more_than_fixed_small_for_an_exact_model():
    """An exact mean leaves only the variances' mismatch: zero for β̃_t, positive for β_t."""
    exact = KnownError("epsilon", lambda t: torch.zeros_like(t, dtype=torch.float64))
    t = torch.arange(1, T)
    x_0 = torch.full((len(t), *SHAPE), PIXEL)
    terms = {}
    for variance_type in ("fixed_small", "fixed_large"):
        diffusion = make_diffusion(exact, variance_type=variance_type)
        x_t, _ = diffusion.add_noise(x_0, t, generator=torch.Generator().manual_seed(2))
        _, x0_predicted = diffusion.eps_and_x0(x_t, t, diffusion.model(x_t, t))
        terms[variance_type] = kl_term_bpd(diffusion, x_0, x_t, t, x0_predicted)
    assert terms["fixed_small"].abs().max() < 1e-5
    assert (terms["fixed_large"] > 1e-3).all()


@pytest.mark.parametrize(
    ("mean", "variance"),
    [(0.0, 1e-4), (PIXEL, 5e-5), (-0.9, 0.01), (0.3, 1.0), (1.5, 1e-3), (-1.2, 4e-4)],
)
def test_decoder_bins_against_a_direct_sum(mean, variance):
    """Every level's log-probability against the bin's Gaussian mass computed in 50 digits, and
    the 256 masses sum to one, the end bins taking the tails."""
    levels = torch.arange(256)
    images = (levels.double() * 2 / 255 - 1).reshape(256, 1, 1, 1)
    log_p = discretized_gaussian_log_likelihood(
        images, torch.full_like(images, mean), torch.tensor(math.log(variance), dtype=torch.float64)
    ).flatten()
    masses = [bin_mass(int(level), mean, variance) for level in levels]
    assert math.isclose(float(mpmath.fsum(masses)), 1.0, rel_tol=1e-12)
    expected = [float(mpmath.log(mass)) for mass in masses]
    np.testing.assert_allclose(log_p.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_decoder_term_of_a_model_off_by_a_fixed_amount():
    diffusion = make_diffusion(KnownError("epsilon", offset))
    t = torch.zeros(3, dtype=torch.long)
    x_0 = torch.full((3, *SHAPE), PIXEL)
    x_1, _ = diffusion.add_noise(x_0, t, generator=torch.Generator().manual_seed(3))
    _, x0_predicted = diffusion.eps_and_x0(x_1, t, diffusion.model(x_1, t))
    alpha_bar = SCHEDULE["alpha_bars"][0]
    x0_expected = PIXEL - math.sqrt((1 - alpha_bar) / alpha_bar) * float(offset(torch.tensor(0)))
    np.testing.assert_allclose(
        decoder_nll_bpd(diffusion, x_0, x0_predicted).numpy(),
        [expected_decoder_bits(x0_expected)] * 3,
        rtol=1e-5,
    )


def test_prior_term():
    diffusion = make_diffusion(KnownError("epsilon", offset))
    np.testing.assert_allclose(
        prior_bpd(diffusion, torch.full((2, *SHAPE), PIXEL)).numpy(), [expected_prior_bits()] * 2, rtol=1e-5
    )


# --- the table: the three errors ------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_and_v_errors_follow_from_the_eps_error(prediction_type):
    """x̂_0-MSE = ε-MSE / SNR and v-MSE = ε-MSE / ᾱ, per sample, whatever the model predicts; with
    buckets one timestep wide the bucket means keep the relation."""
    diffusion = make_diffusion(KnownError(prediction_type, offset), prediction_type)
    table = timestep_loss_table(diffusion, constant_batches([20, 20]), buckets=T)

    alpha_bar = SCHEDULE["alpha_bars"]
    eps_mse = eps_error_of(prediction_type, offset(torch.arange(T)).numpy()) ** 2
    np.testing.assert_allclose(table.mean.numpy(), eps_mse, rtol=1e-4)
    np.testing.assert_allclose(table.x0_mean.numpy(), eps_mse * (1 - alpha_bar) / alpha_bar, rtol=1e-4)
    np.testing.assert_allclose(table.v_mean.numpy(), eps_mse / alpha_bar, rtol=1e-4)
    assert table.objective == prediction_type
    log_snr = np.log(alpha_bar / (1 - alpha_bar))
    np.testing.assert_allclose(table.log_snr_start.numpy(), log_snr, rtol=1e-5)
    np.testing.assert_allclose(table.log_snr_end.numpy(), log_snr, rtol=1e-5)


def test_eps_columns_are_the_original_statistics():
    """Same draws, same passes: the ε-MSE, counts and standard errors equal timestep_loss_statistics's."""
    data = list(
        (torch.randint(0, 256, (96, *SHAPE), generator=torch.Generator().manual_seed(0)) / 127.5 - 1).split(
            32
        )
    )
    diffusion = make_diffusion(KnownError("epsilon", offset))
    original = timestep_loss_statistics(diffusion, data, num_batches=3, buckets=5, seed=4)
    table = timestep_loss_table(diffusion, data, num_batches=3, buckets=5, seed=4)
    for field in ("t_start", "t_end", "mean", "count", "std_error"):
        assert torch.equal(getattr(table, field), getattr(original, field)), field
    assert [list(row)[:6] for row in table.rows()] == [list(row) for row in original.rows()]
    assert [{k: row[k] for k in list(row)[:6]} for row in table.rows()] == original.rows()
    assert list(table.rows()[0])[6:] == [
        "x0_mse",
        "x0_std_error",
        "v_mse",
        "v_std_error",
        "objective",
        "log_snr_start",
        "log_snr_end",
        "vb_bpd",
        "vb_std_error",
        "vb_share",
    ]


# --- the table: the bound -------------------------------------------------------------------------


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("buckets", [T, 2])
def test_bound_of_a_model_with_known_error_is_the_closed_form(variance_type, buckets):
    """Every term is deterministic here, so the estimate is exact once each cell is one timestep:
    buckets one wide, or wide buckets with enough draws to pool them by timestep."""
    diffusion = make_diffusion(KnownError("epsilon", offset), variance_type=variance_type)
    table = timestep_loss_table(diffusion, constant_batches([100, 100]), buckets=buckets)

    delta = offset(torch.arange(T)).numpy()
    per_t = [
        expected_decoder_bits(
            PIXEL - math.sqrt((1 - SCHEDULE["alpha_bars"][0]) / SCHEDULE["alpha_bars"][0]) * delta[0]
        )
    ]
    per_t += [expected_kl_bits(t, delta[t] ** 2, variance_type) for t in range(1, T)]
    bound = table.bound
    assert bound.prior_bpd == pytest.approx(expected_prior_bits(), rel=1e-5)
    assert bound.decoder_bpd == pytest.approx(per_t[0], rel=1e-5)
    assert bound.kl_bpd == pytest.approx(sum(per_t[1:]), rel=1e-4)
    assert bound.total_bpd == pytest.approx(sum(per_t) + expected_prior_bits(), rel=1e-4)
    assert bound.std_error == pytest.approx(0.0, abs=1e-6)
    width = T // buckets
    bucket_means = [sum(per_t[b * width : (b + 1) * width]) / width for b in range(buckets)]
    np.testing.assert_allclose(table.vb_mean.numpy(), bucket_means, rtol=1e-4)
    np.testing.assert_allclose(
        table.vb_share.numpy(), np.array(bucket_means) * width / bound.total_bpd, rtol=1e-4
    )
    assert bound.num_images == 200 and bound.timesteps == T and bound.on_8bit_grid


class SmallNet(nn.Module):
    """A fixed random per-pixel map of (x_t, t): errors that vary with the image and the noise."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(T, generator=generator) * 0.3, requires_grad=False)
        self.bias = nn.Parameter(torch.randn(T, generator=generator) * 0.1, requires_grad=False)

    def forward(self, x_t, t):
        shape = (-1, *([1] * (x_t.ndim - 1)))
        return torch.tanh(self.weight[t].reshape(shape) * x_t + self.bias[t].reshape(shape))


def random_8bit_images(count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, *SHAPE), generator=torch.Generator().manual_seed(seed)) / 127.5 - 1


def test_stratified_estimate_is_unbiased_with_a_calibrated_standard_error():
    """Against the exact every-t sum over many images: over 40 seeds the estimates centre on it,
    and scatter as much as their standard errors say."""
    diffusion = make_diffusion(SmallNet())
    truth = exact_bound(diffusion, random_8bit_images(8000, seed=0), 8000, torch.Generator().manual_seed(9))
    estimates, std_errors = [], []
    for seed in range(40):
        data = list(random_8bit_images(120, seed=100 + seed).split(40))
        bound = timestep_loss_table(diffusion, data, buckets=5, seed=seed).bound
        estimates.append(bound.total_bpd)
        std_errors.append(bound.std_error)
    estimates, std_errors = np.array(estimates), np.array(std_errors)
    spread = estimates.std(ddof=1)
    scatter = math.hypot(spread / math.sqrt(len(estimates)), float(truth.std() / math.sqrt(len(truth))))
    assert abs(estimates.mean() - truth.mean().item()) < 3 * scatter
    assert 0.75 < spread / np.sqrt((std_errors**2).mean()) < 1.3


def test_exact_check_agrees_with_the_estimate():
    model = SmallNet()
    diffusion = make_diffusion(model)
    data = list(random_8bit_images(200, seed=1).split(50))
    table = timestep_loss_table(diffusion, data, num_batches=4, buckets=5, exact_check_images=20)
    check = table.bound.exact_check
    assert check.num_images == 20
    assert check.difference == pytest.approx(table.bound.total_bpd - check.total_bpd)
    assert check.combined_std_error == pytest.approx(math.hypot(table.bound.std_error, check.std_error))
    assert check.agrees
    summary = table.bound.summary()
    assert summary["exact_check"]["agrees_within_2_se"] is True


def test_passes_made():
    """One pass per image at its drawn t, one at t = 0 for the decoder, T per image checked exactly."""
    model = KnownError("epsilon", offset)
    timestep_loss_table(make_diffusion(model), constant_batches([8, 8, 8]), buckets=2)
    assert model.calls == 2 * 24
    model.calls = 0
    timestep_loss_table(make_diffusion(model), constant_batches([8, 8, 8]), buckets=2, exact_check_images=3)
    assert model.calls == 2 * 24 + 3 * T


def test_images_off_the_8bit_grid_are_scored_in_their_bin():
    diffusion = make_diffusion(KnownError("epsilon", offset))
    nudged = [batch + 0.2 / 255 for batch in constant_batches([40, 40])]
    table = timestep_loss_table(diffusion, nudged, buckets=2)
    assert not table.bound.on_8bit_grid


# --- bad input: one line each ---------------------------------------------------------------------


def test_images_outside_the_pixel_range_are_an_error():
    diffusion = make_diffusion(KnownError("epsilon", offset))
    message = one_error_line(
        lambda: timestep_loss_table(diffusion, [torch.full((8, *SHAPE), 1.5)], buckets=2)
    )
    assert "[-1, 1]" in message and "1.5" in message


def test_a_variance_type_the_bound_does_not_cover_is_an_error():
    diffusion = make_diffusion(KnownError("epsilon", offset))
    # A variance the process refuses to be built with today: the bound must refuse it on its own.
    object.__setattr__(diffusion.config, "variance_type", "fixed_medium")
    message = one_error_line(lambda: timestep_loss_table(diffusion, constant_batches([8]), buckets=2))
    assert "'fixed_medium'" in message and "fixed_small" in message


# --- the outputs ----------------------------------------------------------------------------------


def test_csv_json_and_log_snr_figure(tmp_path):
    from PIL import Image

    from diffusion_diagnostics.analysis import write_timestep_loss_csv
    from diffusion_diagnostics.files import read_csv, write_json
    from diffusion_diagnostics.plots import plot_timestep_loss_snr, timestep_loss_snr_figure

    diffusion = make_diffusion(SmallNet())
    table = timestep_loss_table(diffusion, list(random_8bit_images(80, seed=2).split(40)), buckets=5)
    write_timestep_loss_csv(table, tmp_path / "loss.csv")
    write_json({**table.bound.summary(), "split": "heldout"}, tmp_path / "nll.json")
    rows = read_csv(tmp_path / "loss.csv")
    assert [float(row["vb_share"]) for row in rows] == pytest.approx(table.vb_share.tolist())
    bound = json.loads((tmp_path / "nll.json").read_text())
    assert set(bound) >= {
        "total_bpd",
        "std_error",
        "prior_bpd",
        "decoder_bpd",
        "kl_bpd",
        "num_images",
        "split",
    }
    assert bound["total_bpd"] == pytest.approx(bound["prior_bpd"] + bound["decoder_bpd"] + bound["kl_bpd"])
    for name in ("one.png", "two.png"):
        plot_timestep_loss_snr(rows, bound, tmp_path / name)
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
    with Image.open(tmp_path / "one.png") as image:
        assert image.size[0] > 600
    # What the figure draws: each error and the bound's terms at the buckets' log-SNR midpoints.
    errors, terms = timestep_loss_snr_figure(rows, bound).axes
    centres = [(float(r["log_snr_start"]) + float(r["log_snr_end"])) / 2 for r in rows]
    drawn = [container.lines[0].get_xydata() for container in errors.containers]  # errorbar data lines
    expected = [[float(r[key]) for r in rows] for key in ("mse", "x0_mse", "v_mse")]
    assert [data[:, 0].tolist() for data in drawn] == [pytest.approx(centres)] * 3
    assert [data[:, 1].tolist() for data in drawn] == [pytest.approx(values) for values in expected]
    vb = [container.lines[0].get_ydata().tolist() for container in terms.containers]
    assert vb == [pytest.approx([float(r["vb_bpd"]) for r in rows])]
    assert errors.get_yscale() == terms.get_yscale() == "log"
    assert f"{bound['total_bpd']:.3f}" in terms.get_title()
