"""guided-diffusion (openai's codebase after improved-diffusion, from the package index as
guided-diffusion-sdk: its code with additions to the samplers (skip_timesteps, gradient-carrying
cond_fn, PLMS) that these tests do not use; diffed against openai's repository, what they call
computes as openai's does): a network with a learned variance built by its own create_model, trained
a few steps with its own loss and saved as its TrainLoop saves, read as a new user gives it (an
entry naming create_model, rescaled timesteps, cosine schedule, learned_range), then sampled and
measured by this package as that codebase samples and measures it, from the same noise: our DDPM
equals its p_sample_loop, our DDIM its ddim_sample_loop, each term of our bound its _vb_terms_bpd,
our ε-error its training MSE."""

from __future__ import annotations

import pytest
import torch
from guided_diffusion import script_util  # a test extra

from diffusion_diagnostics import SamplingOptions, load_model
from diffusion_diagnostics.analysis import ForwardPass, prediction_errors
from diffusion_diagnostics.bound import bound_terms_bpd, predicted, prior_bpd

from codebase_files import guided_diffusion_entry, save_guided_diffusion_model
from doubles import one_error_line

T, SIZE, DDIM_STEPS = 20, 32, 5
MODEL = {
    "image_size": SIZE,
    "num_channels": 32,  # its GroupNorm takes 32 groups: a multiple of 32
    "num_res_blocks": 1,
    "channel_mult": "1,2",
    "attention_resolutions": "16",
    "num_heads": 1,
    "learn_sigma": True,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return save_guided_diffusion_model(tmp_path_factory.mktemp("guided"), MODEL, T)


def entry(path) -> dict:
    return guided_diffusion_entry(path, MODEL, T)


def respaced(steps: int):
    """Its own process for ``steps`` DDIM steps ("ddimN": timesteps 0, T/N, 2T/N, …)."""
    settings = script_util.model_and_diffusion_defaults()
    return script_util.create_gaussian_diffusion(
        steps=T,
        learn_sigma=True,
        noise_schedule="cosine",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=True,
        rescale_learned_sigmas=settings["rescale_learned_sigmas"],
        timestep_respacing=f"ddim{steps}",
    )


def test_its_network_and_schedule_are_read_as_it_trained_them(trained):
    network, theirs, path = trained
    diffusion, info = load_model(entry(path))
    assert diffusion.learned_variance and diffusion.config.prediction_type == "epsilon"
    # Its cosine βs in float64 against diffusers' squaredcos_cap_v2 in float32.
    torch.testing.assert_close(diffusion.betas.double(), torch.from_numpy(theirs.betas), rtol=1e-5, atol=1e-7)
    x, t = torch.randn(2, 3, SIZE, SIZE), torch.tensor([3, 17])
    with torch.no_grad():
        torch.testing.assert_close(diffusion.model(x, t), network(x, t.float() * 1000 / T))
    assert "squaredcos_cap_v2 β, T = 20, epsilon, learned_range" in info["description"]


def test_our_ddpm_is_its_p_sample_loop(trained):
    network, theirs, path = trained
    diffusion, _ = load_model(entry(path))
    shape = (3, 3, SIZE, SIZE)
    torch.manual_seed(7)  # its loop draws each step's noise from the global generator
    x_T = torch.randn(shape)
    with torch.no_grad():
        expected = theirs.p_sample_loop(network, shape, noise=x_T, clip_denoised=True)
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(torch.randn(shape, generator=generator), x_T)
    ours = diffusion.sample(x_T, generator=generator)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    # The network's variance is what it samples with: a fixed one gives other samples.
    generator = torch.Generator().manual_seed(7)
    torch.randn(shape, generator=generator)
    fixed = diffusion.sample(x_T, generator=generator, options=SamplingOptions(variance_type="fixed_small"))
    assert (fixed - ours).abs().max() > 1e-2


def test_our_ddim_is_its_ddim_sample_loop(trained):
    network, _, path = trained
    diffusion, _ = load_model(entry(path))
    x_T = torch.randn((3, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = respaced(DDIM_STEPS).ddim_sample_loop(
            network, x_T.shape, noise=x_T, clip_denoised=True, eta=0.0
        )
    # Its "ddimN" visits 0, T/N, …: diffusers' leading spacing; it clips x̂_0 and takes ε̂ again from it.
    options = SamplingOptions(clip_x0=True, use_clipped_model_output=True, timestep_spacing="leading")
    ours = diffusion.sample_ddim(x_T, DDIM_STEPS, options=options)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)


def test_each_term_of_our_bound_is_its_vb_terms_bpd(trained):
    network, theirs, path = trained
    diffusion, _ = load_model(entry(path))
    generator = torch.Generator().manual_seed(2)
    # 8-bit images in [-1, 1], one at every t (the decoder's at t = 0).
    x_0 = torch.randint(0, 256, (T, 3, SIZE, SIZE), generator=generator).float() / 127.5 - 1
    t = torch.arange(T)
    x_t, _ = diffusion.add_noise(x_0, t, torch.randn(x_0.shape, generator=generator))
    with torch.no_grad():
        expected = theirs._vb_terms_bpd(network, x_0, x_t, t, clip_denoised=False)["output"]
        _, x0_predicted, log_variance = predicted(diffusion, x_t, t)
    ours = bound_terms_bpd(diffusion, x_0, x_t, t, x0_predicted, log_variance)
    torch.testing.assert_close(ours[1:].float(), expected[1:].float(), rtol=1e-4, atol=1e-6)
    # L_0: its normal CDF is a tanh approximation, ours integrates the Gaussian.
    assert abs(float(ours[0] - expected[0])) <= 1e-3 * float(expected[0])
    torch.testing.assert_close(
        prior_bpd(diffusion, x_0).float(), theirs._prior_bpd(x_0).float(), rtol=1e-4, atol=1e-7
    )


def test_our_error_per_sample_is_its_training_mse(trained):
    network, theirs, path = trained
    diffusion, _ = load_model(entry(path))
    generator = torch.Generator().manual_seed(1)
    x_0 = torch.rand((4, 3, SIZE, SIZE), generator=generator) * 2 - 1
    t = torch.tensor([0, 6, 12, 19])
    noise = torch.randn(x_0.shape, generator=generator)
    with torch.no_grad():
        expected = theirs.training_losses(network, x_0, t, noise=noise)["mse"]
        x_t, _ = diffusion.add_noise(x_0, t, noise=noise)
        eps, x0_predicted = diffusion.eps_and_x0(x_t, t, diffusion.model(x_t, t))
    errors = prediction_errors(diffusion, ForwardPass(0, x_0, t, noise, x_t, eps, x0_predicted))
    torch.testing.assert_close(errors["eps"].float(), expected, rtol=1e-4, atol=1e-7)


def test_its_state_dict_given_on_its_own_says_how_to_give_it(trained, tmp_path):
    _, _, path = trained
    one_error_line(
        lambda: load_model(path), "a bare state dict", "guided-diffusion's UNetModel", "create_model"
    )
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    one_error_line(lambda: load_model(other), "a bare state dict", "the function that builds its network")
