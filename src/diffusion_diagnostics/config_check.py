"""Does the declared config fit the weights? A model trained with one prediction type or schedule
and declared with another (trained ``cosine``, sampled ``linear``) gives wrong numbers everywhere
without an error. On a few held-out images noised at t spread over the schedule, the network's
output is compared with the training target of the declared reading and of each other one:
every prediction type (the same forward passes), and for a named schedule every other named
schedule (new forward passes). Each error is relative: Σ (output − target)² / Σ target², so
readings whose targets differ in scale compare. Where another reading's error is a ``FAR`` part of
the declared one's or less, the check names the key, the declared value and the one that fits.
"""

from __future__ import annotations

import torch

from .diffusion import DiffusionProcess
from .models import RescaledTimesteps
from .process_config import BETA_SCHEDULES, PREDICTION_TYPES

FAR = 0.5  # another reading fits "far better" at this share of the declared reading's error or less
T_RANGE = (0.05, 0.95)  # the t spread over, as shares of T: the ends say little about either key
# Codebases whose networks may be trained on rescaled timesteps (their rescale_timesteps).
TIMESTEP_RESCALING_CODEBASES = ("improved_diffusion", "guided_diffusion")


def reading_errors(
    diffusion: DiffusionProcess, images: torch.Tensor, seed: int = 0
) -> dict[str, dict[str, float]]:
    """The relative error of every reading, by key and value: ``prediction_type`` (each value, on the
    declared schedule) and, for a named schedule, ``beta_schedule`` (each named one, with the
    declared prediction type) and, for improved- and guided-diffusion networks,
    ``rescale_timesteps`` (True and False). ``images`` in [-1, 1] at the model's sample shape;
    image i gets noise at the i-th of ``len(images)`` timesteps spread over T_RANGE."""
    generator = torch.Generator().manual_seed(seed)
    x_0 = images.float()
    noise = torch.randn(x_0.shape, generator=generator)
    low, high = (round(share * (diffusion.timesteps - 1)) for share in T_RANGE)
    t = torch.linspace(low, high, len(x_0)).round().long()
    config = diffusion.config
    errors = {"prediction_type": {}}
    output, _ = _output(diffusion, x_0, noise, t)
    for value in PREDICTION_TYPES:
        reading = diffusion.rebuilt(prediction_type=value)
        errors["prediction_type"][value] = _relative_error(output, reading.training_target(x_0, noise, t))
    rescaled = isinstance(diffusion.model, RescaledTimesteps)
    if rescaled or type(diffusion.model).__module__.split(".")[0] in TIMESTEP_RESCALING_CODEBASES:
        # improved- and guided-diffusion's networks: trained on t, or on t · 1000 / T.
        inner = diffusion.model.network if rescaled else diffusion.model
        other = diffusion.rebuilt(inner if rescaled else RescaledTimesteps(inner, diffusion.timesteps))
        errors["rescale_timesteps"] = {
            rescaled: errors["prediction_type"][config.prediction_type],
            not rescaled: _relative_error(*_output(other, x_0, noise, t)),
        }
    if config.trained_betas is None and config.beta_schedule in BETA_SCHEDULES:
        errors["beta_schedule"] = {config.beta_schedule: errors["prediction_type"][config.prediction_type]}
        for value in BETA_SCHEDULES:
            if value != config.beta_schedule:
                reading = diffusion.rebuilt(beta_schedule=value)
                other, target = _output(reading, x_0, noise, t)
                errors["beta_schedule"][value] = _relative_error(other, target)
    return errors


def config_check(errors: dict[str, dict], diffusion: DiffusionProcess) -> list[dict]:
    """The keys whose declared value another value fits far better (FAR): key, declared value and
    its error, the value that fits best and its error. ``errors``: reading_errors of ``diffusion``."""
    findings = []
    for key, by_value in errors.items():
        if key == "rescale_timesteps":
            declared = isinstance(diffusion.model, RescaledTimesteps)
        else:
            declared = getattr(diffusion.config, key)
        best = min(by_value, key=by_value.get)
        if best != declared and by_value[best] <= FAR * by_value[declared]:
            findings.append(
                {
                    "key": key,
                    "declared": declared,
                    "declared_error": by_value[declared],
                    "fits": best,
                    "fitting_error": by_value[best],
                }
            )
    return findings


def describe_finding(finding: dict) -> str:
    """One line for the log."""
    return (
        f"the weights fit {finding['key']}: {finding['fits']} far better than the declared "
        f"{finding['declared']} (relative error {finding['fitting_error']:.3g} against "
        f"{finding['declared_error']:.3g}); check the model's config"
    )


@torch.inference_mode()
def _output(diffusion: DiffusionProcess, x_0, noise, t) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's output at x_t noised by ``diffusion``'s schedule, and its training target."""
    device = diffusion.device
    x_t, _ = diffusion.add_noise(x_0.to(device), t.to(device), noise.to(device))
    output = diffusion.prediction(diffusion.model(x_t, t.to(device)), x_t).float().cpu()
    return output, diffusion.training_target(x_0.to(device), noise.to(device), t.to(device)).cpu()


def _relative_error(output: torch.Tensor, target: torch.Tensor) -> float:
    return float((output.double() - target.double()).pow(2).sum() / target.double().pow(2).sum())
