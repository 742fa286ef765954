"""lucidrains' denoising-diffusion-pytorch: the checkpoint its own Trainer.save writes after a few
steps on a handful of images, read as a new user gives it (an entry naming its Unet and the
file), sampled and measured by this package as that codebase samples and measures it: our DDPM
equals its p_sample_loop, our DDIM with its clipping its ddim_sample, our v-error its p_losses
(unweighted), from the same noise; a Unet with a learned variance as its LearnedGaussianDiffusion
samples and bounds it."""

from __future__ import annotations

import math

import denoising_diffusion_pytorch as ddp  # a test extra
import pytest
import torch

from diffusion_diagnostics import SamplingOptions, load_model
from diffusion_diagnostics.analysis import ForwardPass, prediction_errors
from diffusion_diagnostics.bound import bound_terms_bpd, predicted
from diffusion_diagnostics.lucidrains import objective_from_loss_weight

from codebase_files import save_lucidrains_trainer_file
from doubles import one_error_line

UNET = {"dim": 8, "dim_mults": [1, 2], "channels": 1, "flash_attn": False}
LEARNED_UNET = {**UNET, "learned_variance": True}
SIZE, T, DDIM_STEPS = 16, 20, 5
SEED = 7  # of the noise both sides' samplers start from


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return save_lucidrains_trainer_file(tmp_path_factory.mktemp("lucidrains"), UNET, SIZE, T, DDIM_STEPS)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    # Its LearnedGaussianDiffusion samples by p_sample_loop only (sampling_timesteps = T): its DDIM
    # calls model_predictions, which names functions its module does not import (2.3.4).
    return save_lucidrains_trainer_file(tmp_path_factory.mktemp("learned"), LEARNED_UNET, SIZE, T, T)


def entry(path, **changes) -> dict:
    spec = {
        "entry_point": "denoising_diffusion_pytorch:Unet",
        "kwargs": UNET,
        "weights": str(path),
        "sample_shape": [1, SIZE, SIZE],
    }
    return {**spec, **changes}


def assert_our_ddpm_is_its_p_sample_loop(diffusion, theirs) -> torch.Tensor:
    """Its p_sample_loop and our DDPM from the same noise (its samplers draw x_T and each step's
    noise from the global generator; ours from a generator seeded alike): equal images, its in
    [0, 1]. Returns the x_T both started from."""
    shape = (4, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.manual_seed(SEED)
        expected = theirs.p_sample_loop(shape)
    generator = torch.Generator().manual_seed(SEED)
    x_T = torch.randn(shape, generator=generator)
    torch.testing.assert_close(
        (diffusion.sample(x_T, generator=generator) + 1) / 2, expected, rtol=0, atol=1e-4
    )
    return x_T


def test_the_trainer_file_is_read_with_its_ema_network_and_schedule(trained):
    trainer, path = trained
    diffusion, info = load_model(entry(path))
    theirs = trainer.ema.ema_model
    assert diffusion.config.prediction_type == "v_prediction"  # its default objective, from loss_weight
    assert diffusion.timesteps == T and diffusion.config.clip_sample
    # Its ᾱ from float64 βs, ours from its βs as the file stores them (float32): equal to 1e-4.
    torch.testing.assert_close(diffusion.alphas_cumprod, theirs.alphas_cumprod, rtol=1e-4, atol=0)
    x, t = torch.randn(2, 1, SIZE, SIZE), torch.tensor([3, 17])
    with torch.no_grad():
        torch.testing.assert_close(diffusion.model(x, t), theirs.model(x, t))
        online, _ = load_model(entry(path, trainer_weights="online"))
        torch.testing.assert_close(online.model(x, t), trainer.model.model(x, t))
        assert not torch.equal(online.model(x, t), diffusion.model(x, t))
    assert info["trainer"] == {"weights": "ema", "step": 2}
    assert "ema weights of a denoising-diffusion-pytorch Trainer file, step 2" in info["description"]


def test_our_ddpm_and_ddim_are_its_own_samplers(trained):
    trainer, path = trained
    diffusion, _ = load_model(entry(path))
    theirs = trainer.ema.ema_model.eval()
    x_T = assert_our_ddpm_is_its_p_sample_loop(diffusion, theirs)
    with torch.no_grad():
        torch.manual_seed(SEED)
        ddim = theirs.ddim_sample(x_T.shape)
    # Its DDIM clips x̂_0 and takes ε̂ again from the clipped x̂_0: our use_clipped_model_output.
    clipped = SamplingOptions(clip_x0=True, use_clipped_model_output=True)
    ours_ddim = diffusion.sample_ddim(x_T, DDIM_STEPS, options=clipped)
    torch.testing.assert_close((ours_ddim + 1) / 2, ddim, rtol=0, atol=1e-4)
    assert (diffusion.sample_ddim(x_T, DDIM_STEPS, options=SamplingOptions(clip_x0=True)) != ours_ddim).any()


def test_our_error_per_sample_is_its_unweighted_loss(trained):
    trainer, path = trained
    diffusion, _ = load_model(entry(path))
    theirs = trainer.ema.ema_model
    generator = torch.Generator().manual_seed(1)
    x_0 = torch.rand((6, 1, SIZE, SIZE), generator=generator) * 2 - 1
    t = torch.tensor([0, 3, 7, 11, 15, 19])
    noise = torch.randn(x_0.shape, generator=generator)
    with torch.no_grad():
        weighted = theirs.p_losses(x_0, t, noise=noise, loss_reduction="none")
        x_t, _ = diffusion.add_noise(x_0, t, noise=noise)
        eps, x0_predicted = diffusion.eps_and_x0(x_t, t, diffusion.model(x_t, t))
    errors = prediction_errors(diffusion, ForwardPass(0, x_0, t, noise, x_t, eps, x0_predicted))
    torch.testing.assert_close(errors["v"].float(), weighted / theirs.loss_weight[t], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("objective", "min_snr", "declared"),
    [("pred_noise", False, "epsilon"), ("pred_x0", False, "sample"), ("pred_v", False, "v_prediction"),
     ("pred_noise", True, "epsilon"), ("pred_v", True, "v_prediction")],
)  # fmt: skip
@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_the_objective_is_read_from_the_loss_weights(objective, min_snr, declared, schedule):
    settings = {
        "objective": objective,
        "beta_schedule": schedule,
        "min_snr_loss_weight": min_snr,
        "min_snr_gamma": 5,
    }
    diffusion = ddp.GaussianDiffusion(ddp.Unet(**UNET), image_size=SIZE, timesteps=1000, **settings)
    read, gamma = objective_from_loss_weight(diffusion.betas.float(), diffusion.loss_weight)
    assert read == declared and gamma == (pytest.approx(5.0, rel=1e-3) if min_snr else None)


def test_what_cannot_be_read_is_one_error_line(trained, tmp_path):
    _, path = trained
    one_error_line(
        lambda: load_model(entry(path, kwargs={**UNET, "dim": 16})),
        "init_conv.weight (8×1×7×7 in the weights, 16×1×7×7 in the network)",
    )
    one_error_line(
        lambda: load_model(entry(path, kwargs={**UNET, "self_condition": True})), "self-conditioned"
    )
    one_error_line(
        lambda: load_model(entry(path, schedule={"prediction_type": "epsilon"})),
        "loss_weight is v_prediction's",
    )
    one_error_line(
        lambda: load_model(entry(path, schedule={"beta_schedule": "linear"})), "may only give prediction_type"
    )
    one_error_line(
        lambda: load_model(entry(path, trainer_weights="best")), "trainer_weights 'best' is unknown"
    )
    payload = torch.load(path, weights_only=True)
    del payload["ema"]["ema_model.betas"]
    payload["ema"] = {key: value for key, value in payload["ema"].items() if not key.startswith("ema_model.")}
    without_ema = tmp_path / "no-ema.pt"
    torch.save(payload, without_ema)
    one_error_line(lambda: load_model(entry(without_ema)), "no ema entry", "trainer_weights: online")
    assert load_model(entry(without_ema, trainer_weights="online"))[0].timesteps == T
    plain = tmp_path / "plain.pt"
    torch.save(payload["model"], plain)
    one_error_line(lambda: load_model(entry(plain, trainer_weights="ema")), "trainer_weights is for")


def test_the_planner_says_what_the_file_is_without_torch(trained):
    """describe_source (the report's captions) reads the Trainer file's plain values only."""
    _, path = trained
    from diffusion_diagnostics.sources import describe_source

    line = describe_source(entry(path, trainer_weights="online"), {})
    assert line == (
        f"network denoising_diffusion_pytorch:Unet with the online weights of denoising-diffusion-pytorch "
        f"Trainer file {path} (step 2; its process: results' model.json)"
    )


def test_the_trainer_file_on_its_own_is_read_with_the_unet_its_weights_tell(trained):
    """checkpoint: model-N.pt alone: dim, dim_mults and channels from the weights' shapes, the
    rest of its Unet's defaults, at the digits' size (the file holds no image size)."""
    trainer, path = trained
    diffusion, info = load_model(path)
    given, _ = load_model(entry(path))
    assert diffusion.sample_shape == (1, 28, 28) and info["trainer"] == {"weights": "ema", "step": 2}
    x, t = torch.randn(2, 1, SIZE, SIZE), torch.tensor([3, 17])
    with torch.no_grad():
        torch.testing.assert_close(diffusion.model(x, t), given.model(x, t))
    from diffusion_diagnostics.sources import describe_source

    assert describe_source(str(path), {}) == (
        f"denoising-diffusion-pytorch Trainer file {path} (step 2; its process: model.json)"
    )
    # Its results folder given as if it were a diffusers folder: named for what it is.
    one_error_line(
        lambda: load_model(path.parent), "a denoising-diffusion-pytorch results folder", "model-2.pt"
    )


def test_a_trainer_file_whose_unet_its_weights_do_not_tell_asks_for_its_arguments(tmp_path):
    """A Unet built with arguments the shapes do not show (attention heads) cannot be guessed."""
    other = {**UNET, "attn_heads": 2, "attn_dim_head": 8}
    _, path = save_lucidrains_trainer_file(tmp_path, other, SIZE, T, DDIM_STEPS)
    one_error_line(
        lambda: load_model(path), "could not be built from its weights alone", "entry with its Unet's"
    )
    assert load_model(entry(path, kwargs=other))[0].timesteps == T


def test_a_learned_variance_is_read_and_sampled_as_its_learned_gaussian_diffusion(learned):
    """Unet(learned_variance=True): ε and improved-diffusion's variance interpolation, whatever the
    objective its loss_weight says (pred_v, its default, here)."""
    trainer, path = learned
    diffusion, _ = load_model(entry(path, kwargs=LEARNED_UNET))
    assert diffusion.learned_variance and diffusion.config.prediction_type == "epsilon"
    theirs = trainer.ema.ema_model.eval()
    assert_our_ddpm_is_its_p_sample_loop(diffusion, theirs)
    # Its variational term: p_losses with the vb weight 1, less its simple ε term (ours, checked above
    # for the plain file): each KL term ours from the same x_t.
    generator = torch.Generator().manual_seed(1)
    x_0 = torch.randint(0, 256, (T, 1, SIZE, SIZE), generator=generator).float() / 127.5 - 1
    t, noise = torch.arange(T), torch.randn(x_0.shape, generator=generator)
    theirs.vb_loss_weight = 1.0
    with torch.no_grad():
        total = theirs.p_losses(x_0, t, noise=noise, loss_reduction="none")
        x_t, _ = diffusion.add_noise(x_0, t, noise=noise)
        eps, x0_predicted, log_variance = predicted(diffusion, x_t, t)
        _, _, their_log_variance, _ = theirs.p_mean_variance(x=x_t, t=t, clip_denoised=False)
    vb = total.double() - (eps - noise).pow(2).flatten(1).mean(1).double()
    bound = bound_terms_bpd(diffusion, x_0, x_t, t, x0_predicted, log_variance)
    torch.testing.assert_close(bound[1:], vb[1:], rtol=1e-3, atol=1e-5)
    # At t = 0 the conventions part: its lower end is log β̃_0 = log 0, clamped to log 1e-20, where
    # improved-diffusion's (and ours) is log β̃_1. Its decoder's σ is then ~1e-6, and its L_0 each
    # pixel's probability floor (1e-15, 49.8 bits); so L_0 is not compared.
    torch.testing.assert_close(their_log_variance[1:], log_variance[1:].float(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        frac = (theirs.model(x_t, t)[:1, 1:] + 1) / 2
    lower_end = frac * theirs.betas[0].log() + (1 - frac) * math.log(1e-20)
    torch.testing.assert_close(their_log_variance[:1], lower_end, rtol=1e-5, atol=1e-4)
    # On its own, the file's Unet is built with learned_variance, as its weights tell.
    alone, _ = load_model(path)
    assert alone.learned_variance and alone.sample_shape == (1, 28, 28)
    one_error_line(
        lambda: load_model(entry(path, kwargs=LEARNED_UNET, schedule={"prediction_type": "v_prediction"})),
        "learns its variance",
        "trained for epsilon",
    )
