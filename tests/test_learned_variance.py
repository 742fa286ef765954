"""A network that predicts its own variance (diffusers' ``variance_type: learned_range``, out_channels
2 × in_channels; improved-diffusion's learn_sigma): read from a diffusers folder as a user saves it,
DDPM sampled with the network's variance as diffusers' DDPMScheduler samples it, DDIM and the
solvers reading the prediction half, and the bound's terms with Σ_θ equal to improved-diffusion's
``_vb_terms_bpd`` with LEARNED_RANGE, rewritten here from its code (improved_diffusion/losses.py
and gaussian_diffusion.py, openai/improved-diffusion, read for its equations)."""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch

from diffusion_diagnostics import SamplingOptions, load_model
from diffusion_diagnostics.bound import bound_terms_bpd, predicted
from diffusion_diagnostics.solvers import build_scheduler, solve

from doubles import one_error_line, tiny_unet2d

T, SIZE = 20, 8


def learned_folder(tmp_path, out_channels: int = 2, variance_type: str = "learned_range"):
    """A DDPMPipeline folder of a tiny UNet with a variance half, saved by diffusers itself."""
    unet = tiny_unet2d(out_channels=out_channels).eval()
    # Its untrained variance half is near 0: spread it over (-1, 1) so that frac varies; learned
    # reads it as σ² itself, which must stay positive: about 0.5, varying a little.
    with torch.no_grad():
        unet.conv_out.bias[1:] = 0.5
        if variance_type == "learned":
            unet.conv_out.weight[1:] *= 0.05
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_start=1e-3, beta_end=0.2, variance_type=variance_type
    )
    folder = tmp_path / "learned"
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder, unet, scheduler


@pytest.mark.parametrize("variance_type", ["learned_range", "learned"])
def test_ddpm_samples_with_the_networks_variance_as_diffusers_does(tmp_path, variance_type):
    """learned_range interpolates log σ² between log β̃_t and log β_t; learned (diffusers' reading)
    takes the half as σ² itself, here about 0.5 (the half's bias)."""
    folder, unet, scheduler = learned_folder(tmp_path, variance_type=variance_type)
    diffusion, info = load_model(folder)
    assert diffusion.learned_variance and variance_type in info["description"]
    x_T = torch.randn((3, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    ours = diffusion.sample(x_T, generator=torch.Generator().manual_seed(1))
    generator, x = torch.Generator().manual_seed(1), x_T.clone()
    scheduler.set_timesteps(T)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)
    # The variance is the network's: read as fixed_small, the same noise gives other images.
    fixed_small = SamplingOptions(variance_type="fixed_small")
    fixed = diffusion.sample(x_T, generator=torch.Generator().manual_seed(1), options=fixed_small)
    assert (fixed - ours).abs().max() > 1e-3


def test_ddim_and_the_solvers_read_the_prediction_half(tmp_path):
    folder, unet, _ = learned_folder(tmp_path)
    diffusion, _ = load_model(folder)

    class PredictionHalf(torch.nn.Module):
        def forward(self, x, t):
            return unet(x, t).sample[:, :1]

    half = diffusion.rebuilt(PredictionHalf(), variance_type="fixed_small")
    x_T = torch.randn((3, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(diffusion.sample_ddim(x_T, 5), half.sample_ddim(x_T, 5))
    torch.testing.assert_close(diffusion.ddim_invert(x_T, 5), half.ddim_invert(x_T, 5))
    ours, nfe = solve(diffusion, build_scheduler("dpmsolver++2m", diffusion.config), 5, x_T)
    theirs, _ = solve(half, build_scheduler("dpmsolver++2m", half.config), 5, x_T)
    assert nfe == 5
    torch.testing.assert_close(ours, theirs)


def improved_diffusion_terms(diffusion, x_0, x_t, t, output) -> torch.Tensor:
    """improved-diffusion's _vb_terms_bpd (clip_denoised False, as this package's bound never
    clips) for an ε-predicting LEARNED_RANGE model, in float64, its schedule in numpy."""
    betas = diffusion.betas.double().numpy()
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)

    def at(values):
        return torch.from_numpy(values)[t].reshape(-1, 1, 1, 1)

    x_0, x_t, output = x_0.double(), x_t.double(), output.double()
    eps, var_values = output[:, :1], output[:, 1:]
    frac = (var_values + 1) / 2
    model_log_variance = frac * at(np.log(betas)) + (1 - frac) * at(posterior_log_variance_clipped)
    pred_xstart = at(np.sqrt(1.0 / alphas_cumprod)) * x_t - at(np.sqrt(1.0 / alphas_cumprod - 1)) * eps
    model_mean = at(coef1) * pred_xstart + at(coef2) * x_t
    true_mean = at(coef1) * x_0 + at(coef2) * x_t
    true_log_variance = at(posterior_log_variance_clipped)
    log_ratio = true_log_variance - model_log_variance
    kl = 0.5 * (
        -1.0
        - log_ratio
        + torch.exp(log_ratio)
        + (true_mean - model_mean) ** 2 * torch.exp(-model_log_variance)
    )
    kl = kl.flatten(1).mean(1) / math.log(2.0)

    def approx_standard_normal_cdf(x):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    centered, inv_stdv = x_0 - model_mean, torch.exp(-0.5 * model_log_variance)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_probs = torch.where(
        x_0 < -0.999,
        torch.log(cdf_plus.clamp(min=1e-12)),
        torch.where(x_0 > 0.999, torch.log((1.0 - cdf_min).clamp(min=1e-12)),
                    torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )  # fmt: skip
    decoder_nll = -log_probs.flatten(1).mean(1) / math.log(2.0)
    return torch.where(t == 0, decoder_nll, kl)


def test_the_bound_with_the_learned_variance_is_improved_diffusions(tmp_path):
    folder, unet, _ = learned_folder(tmp_path)
    diffusion, _ = load_model(folder)
    generator = torch.Generator().manual_seed(2)
    # 8-bit images in [-1, 1], at every t (the decoder's at t = 0).
    x_0 = torch.randint(0, 256, (T, 1, SIZE, SIZE), generator=generator).float() / 127.5 - 1
    t = torch.arange(T)
    x_t, _ = diffusion.add_noise(x_0, t, torch.randn(x_0.shape, generator=generator))
    with torch.no_grad():
        output = unet(x_t, t).sample
        _, x0_predicted, log_variance = predicted(diffusion, x_t, t)
    ours = bound_terms_bpd(diffusion, x_0, x_t, t, x0_predicted, log_variance)
    theirs = improved_diffusion_terms(diffusion, x_0, x_t, t, output)
    # The KL terms alike (float32 network, float64 arithmetic on both sides).
    torch.testing.assert_close(ours[1:], theirs[1:], rtol=1e-4, atol=1e-6)
    # L_0: their normal CDF is a tanh approximation, ours integrates the Gaussian: measured here
    # 3.9717 against 3.9713 bits/dim (4e-4 apart, 0.01 % of the term).
    assert abs(float(ours[0] - theirs[0])) <= 1e-3 * float(theirs[0])
    # The fixed variance's bound is another number: Σ_θ is read.
    fixed = bound_terms_bpd(diffusion, x_0, x_t, t, x0_predicted)
    assert (fixed[1:] - ours[1:]).abs().max() > 1e-3


def test_a_variance_half_the_config_does_not_declare_is_one_error_line(tmp_path):
    folder, _, _ = learned_folder(tmp_path, out_channels=1)
    one_error_line(lambda: load_model(folder), "out_channels 1", "learned_range needs 2 × in_channels (2)")
    other = tmp_path / "other"
    other.mkdir()
    folder, _, _ = learned_folder(other, out_channels=2, variance_type="fixed_small")
    one_error_line(lambda: load_model(folder), "out_channels 2", "a learned variance")
    folder, _, _ = learned_folder(tmp_path / "third", out_channels=1, variance_type="learned")
    one_error_line(lambda: load_model(folder), "out_channels 1", "learned needs 2 × in_channels (2)")
    # learned with a half that goes negative: no σ, said as such.
    folder, _, _ = learned_folder(tmp_path / "fourth", variance_type="learned")
    diffusion, _ = load_model(folder)
    with torch.no_grad():
        diffusion.model.unet.conv_out.bias[1:] = -0.5
    one_error_line(lambda: diffusion.sample(torch.zeros(1, 1, SIZE, SIZE)), "σ² itself", "learned_range")


class TwoHalves(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 2 * channels, 3, padding=1)

    def forward(self, x_t, t):
        return self.conv(x_t)


def build_two_halves(channels: int = 1) -> torch.nn.Module:
    """An entry point's network with a variance half: 2 × channels out."""
    return TwoHalves(channels)


def test_an_entry_points_variance_half_is_read_as_its_schedule_says(tmp_path):
    network = build_two_halves()
    weights = tmp_path / "two.pt"
    torch.save(network.state_dict(), weights)
    entry = {
        "entry_point": "test_learned_variance:build_two_halves",
        "weights": str(weights),
        "sample_shape": [1, 8, 8],
    }
    diffusion, _ = load_model({**entry, "schedule": {"variance_type": "learned_range"}})
    assert diffusion.learned_variance and diffusion.sample(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 8, 8)
    one_error_line(lambda: load_model(entry), "gives 2 channels out, not 1", "schedule.variance_type")
