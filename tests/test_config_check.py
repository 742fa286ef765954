"""Does the declared config fit the weights: on Gaussian data with the exact ε-optimal network (a
linear schedule, T = 1000), the declared reading fits and raises nothing; declared with another
prediction type or schedule, the check names the key, the declared value and the one that fits."""

from __future__ import annotations

import pytest
import torch

from diffusion_diagnostics import DiffusionProcess
from diffusion_diagnostics.config_check import FAR, config_check, describe_finding, reading_errors

from doubles import MU, SD, ContinuousGaussianEps, gaussian_alpha_bars


def declared(**changes) -> DiffusionProcess:
    """The exact ε of a linear schedule's Gaussian data, declared with ``changes``."""
    network = ContinuousGaussianEps(gaussian_alpha_bars())
    return DiffusionProcess(network, 1000, 1e-4, 0.02, sample_shape=(1, 4, 4), **changes)


def images(n: int = 64) -> torch.Tensor:
    return MU + SD * torch.randn((n, 1, 4, 4), generator=torch.Generator().manual_seed(3))


def test_the_declared_config_that_made_the_weights_fits_them():
    diffusion = declared()
    errors = reading_errors(diffusion, images())
    assert set(errors) == {"prediction_type", "beta_schedule"}
    assert min(errors["prediction_type"], key=errors["prediction_type"].get) == "epsilon"
    assert min(errors["beta_schedule"], key=errors["beta_schedule"].get) == "linear"
    assert errors["beta_schedule"]["linear"] == errors["prediction_type"]["epsilon"]
    assert config_check(errors, diffusion.config) == []


@pytest.mark.parametrize(
    ("changes", "key", "fits"),
    [
        ({"prediction_type": "v_prediction"}, "prediction_type", "epsilon"),
        ({"prediction_type": "sample"}, "prediction_type", "epsilon"),
        ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule", "linear"),
        # Not scaled_linear: this Gaussian's irreducible ε error (0.13 of ε's power) leaves linear
        # only 1.9 x better than it, short of FAR (the shipped MNIST model: 0.018 against 0.13).
    ],
)
def test_a_config_the_weights_were_not_trained_with_is_named(changes, key, fits):
    diffusion = declared(**changes)
    [finding] = config_check(reading_errors(diffusion, images()), diffusion.config)
    assert (finding["key"], finding["declared"], finding["fits"]) == (key, changes[key], fits)
    assert finding["fitting_error"] <= FAR * finding["declared_error"]
    line = describe_finding(finding)
    assert "\n" not in line and f"{key}: {fits} far better than the declared {changes[key]}" in line


def test_a_schedule_given_as_betas_is_not_read_with_named_ones():
    betas = torch.linspace(1e-4, 0.02, 1000).tolist()
    network = ContinuousGaussianEps(gaussian_alpha_bars())
    diffusion = DiffusionProcess(network, 1000, trained_betas=betas, sample_shape=(1, 4, 4))
    assert set(reading_errors(diffusion, images())) == {"prediction_type"}


def test_an_untrained_network_fits_no_reading_far_better():
    diffusion = DiffusionProcess(torch.nn.Conv2d(1, 1, 1), 1000, sample_shape=(1, 4, 4))
    diffusion.model.forward = lambda x, t: torch.zeros_like(x)  # outputs nothing: every error is 1
    errors = reading_errors(diffusion, images())
    assert all(value == pytest.approx(1.0) for by_value in errors.values() for value in by_value.values())
    assert config_check(errors, diffusion.config) == []
