"""Checkpoints of lucidrains' denoising-diffusion-pytorch, as its ``Trainer.save`` writes them
(``results/model-<milestone>.pt``): a dict of ``step``, ``model`` (the ``GaussianDiffusion``'s state:
the ``Unet`` under ``model.*`` beside the schedule's buffers), ``opt``, ``ema`` (``ema_pytorch``'s
state: ``ema_model.*`` and ``online_model.*``, ``initted``, ``step``), ``scaler`` and ``version``.

The file holds no ``Unet`` constructor arguments and no objective. The schedule is its own
``betas`` buffer (any of its schedules: its ``sigmoid`` is not diffusers'); the objective is read
from the ``loss_weight`` buffer, which ``GaussianDiffusion`` sets from it: maybe-clipped SNR / SNR
for ``pred_noise``, maybe-clipped SNR for ``pred_x0``, maybe-clipped SNR / (SNR + 1) for ``pred_v``,
where min-SNR weighting clips the SNR at γ.

A ``Unet(learned_variance=True)`` (2C channels out) is trained by its ``LearnedGaussianDiffusion``,
which reads the first half as the noise and the second as improved-diffusion's variance
interpolation, whatever objective (and so ``loss_weight``) it was built with: its
``p_mean_variance`` and the simple term of its ``p_losses`` both take the first half as ε.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DiagnosticsError

# torch is imported where a tensor is made: the workflow's planner recognizes a Trainer file
# (is_trainer_file) without it.
if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Its objectives, and diffusers' names for them (this package's prediction types).
OBJECTIVES = {"pred_noise": "epsilon", "pred_x0": "sample", "pred_v": "v_prediction"}
TRAINER_KEYS = {"step", "model", "ema", "version"}
WEIGHTS = ("ema", "online")


def is_trainer_file(payload) -> bool:
    """Whether a file's content (read plain, tensors or not) is a denoising-diffusion-pytorch
    Trainer checkpoint."""
    return (
        isinstance(payload, Mapping)
        and TRAINER_KEYS <= set(payload)
        and isinstance(payload["model"], Mapping)
    )


@dataclass(frozen=True)
class TrainerCheckpoint:
    """The network's weights (the Unet's state dict), the schedule's βs and the loss weights."""

    network: dict[str, torch.Tensor]
    betas: torch.Tensor
    loss_weight: torch.Tensor
    step: int

    @property
    def learns_variance(self) -> bool:
        """Its Unet gives twice the channels it takes (learned_variance=True)."""
        return learns_variance(self.network)


def learns_variance(network: Mapping) -> bool:
    """Whether a Unet's weights give twice the channels they take: its final 1 × 1 convolution
    against its first one (a self-conditioned Unet takes 2C in and gives C). False for a network
    without them (another network trained by its GaussianDiffusion)."""
    if "final_conv.weight" not in network or "init_conv.weight" not in network:
        return False
    return network["final_conv.weight"].shape[0] == 2 * network["init_conv.weight"].shape[1]


def read_trainer_checkpoint(payload: Mapping, weights: str, where: str) -> TrainerCheckpoint:
    """The ``weights`` (``ema`` or ``online``) network of a Trainer file's content, with its schedule."""
    import torch

    if weights not in WEIGHTS:
        raise DiagnosticsError(f"{where}: trainer_weights '{weights}' is unknown; use ema or online")
    if weights == "ema":
        ema = payload.get("ema")
        if not isinstance(ema, Mapping) or not any(key.startswith("ema_model.") for key in ema):
            raise DiagnosticsError(
                f"{where}: the Trainer file has no ema entry (trained without EMA); ask for its online "
                "weights with trainer_weights: online"
            )
        state, prefix = ema, "ema_model."
    else:
        state, prefix = payload["model"], ""
    # GaussianDiffusion's own entries (its buffers), and among them its Unet's, under "model."
    buffers = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    network = {key[len("model.") :]: value for key, value in buffers.items() if key.startswith("model.")}
    schedule = ("betas", "loss_weight")
    for name in schedule:
        if not isinstance(buffers.get(name), torch.Tensor):
            raise DiagnosticsError(f"{where}: the Trainer file's {weights} state has no {name} buffer")
    return TrainerCheckpoint(network, *(buffers[name].double() for name in schedule), int(payload["step"]))


def objective_from_loss_weight(betas: torch.Tensor, loss_weight: torch.Tensor) -> tuple[str, float | None]:
    """The prediction type whose weighting ``loss_weight`` is, and min-SNR's γ where the SNR was
    clipped (None where not); one error line where it is none of them. ``betas``: the file's own,
    as stored (float32). Its SNR is recomputed from them in float64, which keeps 1 − ᾱ exact
    near t = 0, where the file's float32 ᾱ does not; the weightings differ by factors of the SNR,
    so a tolerance of 1e-3 tells them apart."""
    import torch

    alphas_cumprod = torch.cumprod(1 - betas.double(), 0)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    # loss_weight times each objective's divisor is the (maybe clipped) SNR for the true objective.
    divisors = {"pred_noise": snr, "pred_x0": torch.ones_like(snr), "pred_v": snr + 1}
    for objective, divisor in divisors.items():
        weighted = loss_weight.double() * divisor
        gamma = float(weighted.max())
        if torch.allclose(weighted, snr.clamp(max=gamma), rtol=1e-3, atol=0):
            clipped = bool((snr > gamma * (1 + 1e-3)).any())
            return OBJECTIVES[objective], gamma if clipped else None
    raise DiagnosticsError(
        "the Trainer file's loss_weight is no objective's weighting (pred_noise, pred_x0, pred_v); give the "
        "objective as schedule: {prediction_type: ...}"
    )


def trainer_process(checkpoint: TrainerCheckpoint, declared: str | None, where: str) -> dict:
    """The process in diffusers' scheduler keys: the file's βs as trained_betas, the objective the
    loss weights say (checked against ``declared``), x̂_0 clipped as its samplers clip it; for a
    learned variance, ε and learned_range, as its LearnedGaussianDiffusion reads the output."""
    process = {
        "num_train_timesteps": len(checkpoint.betas),
        "trained_betas": checkpoint.betas.tolist(),
        "clip_sample": True,
    }
    if checkpoint.learns_variance:
        objective, why = "epsilon", "its Unet learns its variance, and LearnedGaussianDiffusion reads noise"
        log.info("%s: a learned variance; its first half read as noise (LearnedGaussianDiffusion)", where)
        process["variance_type"] = "learned_range"
    else:
        objective, gamma = objective_from_loss_weight(checkpoint.betas, checkpoint.loss_weight)
        why = f"the file's loss_weight is {objective}'s weighting"
        if gamma is not None:
            log.info("%s: the loss was weighted by min-SNR, γ = %g (from its loss_weight)", where, gamma)
    if declared is not None and declared != objective:
        raise DiagnosticsError(
            f"{where}: schedule.prediction_type is {declared}, but {why}; the network was trained for "
            f"{objective}"
        )
    return {**process, "prediction_type": objective}


def unet_arguments(network: Mapping) -> dict:
    """Its ``Unet``'s constructor arguments as far as the weights' shapes tell them (``dim``,
    ``dim_mults``, ``channels``, ``learned_variance``), the rest left at its defaults: ``dim`` from
    the time MLP (4 · dim wide), each level's width from its first block, the innermost from the
    middle block, the channels from what it gives out (half of it for a learned variance)."""
    dim = network["time_mlp.1.weight"].shape[0] // 4
    levels = sorted({int(key.split(".")[1]) for key in network if key.startswith("downs.")})
    widths = [network[f"downs.{level}.0.block1.proj.weight"].shape[0] for level in levels[1:]]
    widths.append(network["mid_block1.block1.proj.weight"].shape[0])
    learned = learns_variance(network)
    arguments = {
        "dim": dim,
        "dim_mults": [width // dim for width in widths],
        "channels": network["final_conv.weight"].shape[0] // (2 if learned else 1),
        "flash_attn": False,
    }
    return {**arguments, "learned_variance": True} if learned else arguments


def check_network(network, where: str) -> None:
    """Refuse what the samplers here cannot call as model(x_t, t)."""
    if getattr(network, "self_condition", False):
        raise DiagnosticsError(
            f"{where}: a self-conditioned Unet (self_condition=True) takes its own last prediction as an "
            "input, which these diagnostics do not feed it; not supported"
        )
