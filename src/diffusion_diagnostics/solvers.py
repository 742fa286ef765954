"""diffusers' solvers on any model this package reads: each scheduler built from the model's own
process, driven as diffusers' pipelines drive it, with its network evaluations counted.

A scheduler is built from the process's configuration in diffusers' keys
(:func:`scheduler_config`: the βs by name, or ``trained_betas`` where the schedule has no diffusers
name, and the prediction type), so that a model read from this package's checkpoint, a diffusers
folder or an entry point is sampled by the very same arithmetic as diffusers' own scheduler built
from the equivalent config. :func:`solve` starts from the noise scaled by the scheduler's
``init_noise_sigma``, feeds every input through its ``scale_model_input`` and counts each call of
the network (:class:`CountingNetwork`): the number of function evaluations (NFE) is counted, not
computed, so Heun's two per step and PNDM's warm-up are what they are. diffusers is the optional
``diffusers`` extra.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .diffusion import DiffusionProcess
from .errors import DiagnosticsError
from .process_config import LEARNED_VARIANCES, SCHEDULER_KEYS, ProcessConfig

# Our names for diffusers' solvers: the scheduler class and the settings that make it that solver.
SOLVERS = {
    "dpmsolver++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmsolver++3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
}
# The timestep spacings, and the noise-level spacings a scheduler may offer beside them.
SPACINGS = ("leading", "linspace", "trailing")
SIGMA_SPACINGS = {"karras": "use_karras_sigmas", "lu_lambdas": "use_lu_lambdas"}


def scheduler_config(config: ProcessConfig) -> dict:
    """The process in diffusers' scheduler config keys (the inverse of
    :meth:`ProcessConfig.from_scheduler_config`): ``trained_betas`` only where the schedule has
    no diffusers name."""
    settings = {key: getattr(config, name) for key, name in SCHEDULER_KEYS.items()}
    if config.trained_betas is None:
        del settings["trained_betas"]
    else:
        settings["trained_betas"] = list(config.trained_betas)
    return settings


def build_scheduler(
    kind: str, config: ProcessConfig, spacing: str = "trailing", clip: bool | None = None, **options
):
    """diffusers' scheduler for solver ``kind`` (a name of SOLVERS, or the name of any diffusers
    scheduler class), built from the process ``config``: ``spacing`` one of SPACINGS (which
    timesteps it visits) or of SIGMA_SPACINGS (Karras' or uniform-λ noise levels, where the
    scheduler has them); ``clip`` whether x̂_0 is clipped where the scheduler can clip (None: as
    the process's clip_sample says, as diffusers' ``from_config`` would); ``options`` any other
    argument of the scheduler's. One error line for what cannot be built."""
    import diffusers

    name, settings = SOLVERS.get(kind, (kind, {}))
    scheduler_class = getattr(diffusers, name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise DiagnosticsError(
            f"sampler '{kind}' is neither one of {', '.join(SOLVERS)} nor a diffusers scheduler class"
        )
    accepted = set(inspect.signature(scheduler_class.__init__).parameters)
    if not {"beta_schedule", "trained_betas"} & accepted:
        # Flow matching, EDM, variance-exploding and consistency schedulers, the pipelines' own for
        # conditional or latent models: their noise is not this model's β schedule.
        raise DiagnosticsError(
            f"sampler '{kind}' ({name}) takes no β schedule, so it cannot sample this model's process "
            f"(it is made for another kind of model); use one of {', '.join(SOLVERS)}"
        )
    arguments = {key: value for key, value in scheduler_config(config).items() if key in accepted}
    if config.variance_type in LEARNED_VARIANCES:
        # solve() gives a solver the prediction half only: its own default, not diffusers' slicing.
        arguments.pop("variance_type", None)
    if clip is not None and "clip_sample" in accepted:
        arguments["clip_sample"] = clip
    if spacing in SIGMA_SPACINGS:
        if SIGMA_SPACINGS[spacing] not in accepted:
            raise DiagnosticsError(
                f"sampler '{kind}' has no {spacing} noise levels; use one of {', '.join(SPACINGS)}"
            )
        arguments[SIGMA_SPACINGS[spacing]] = True
    elif spacing in SPACINGS:
        arguments["timestep_spacing"] = spacing
    else:
        raise DiagnosticsError(
            f"timestep spacing '{spacing}' is unknown; use one of {', '.join([*SPACINGS, *SIGMA_SPACINGS])}"
        )
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DiagnosticsError(f"sampler '{kind}' ({name}) takes no {', '.join(unknown)}")
    return scheduler_class(**{**arguments, **settings, **options})


class CountingNetwork(nn.Module):
    """The network, and how many times it was called (each call one evaluation of the batch)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network, self.calls = network, 0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.network(x_t, t)


def set_steps(scheduler, steps: int, device: torch.device | str = "cpu") -> None:
    """``scheduler.set_timesteps(steps)``, or one error line where it cannot take that many."""
    if getattr(scheduler, "order", 1) > 1 and steps < 2:
        # A second-order scheduler (Heun, KDPM2) makes its last step first-order: one step is Euler's.
        raise DiagnosticsError(
            f"{type(scheduler).__name__} needs at least 2 steps: at {steps} it takes a single Euler step"
        )
    try:
        scheduler.set_timesteps(steps, device=device)
    except (ValueError, IndexError) as error:
        raise DiagnosticsError(f"{type(scheduler).__name__} cannot take {steps} steps: {error}") from None


def check_step(scheduler, steps: int, sample_shape: tuple[int, ...]) -> None:
    """One error line where ``scheduler`` cannot take ``steps`` steps or cannot step at all on this
    model (a prediction type it lacks): its first step tried on zeros, no network run."""
    set_steps(scheduler, steps)
    zeros, first = torch.zeros((1, *sample_shape)), scheduler.timesteps[0]
    try:
        scheduler.step(zeros, first, scheduler.scale_model_input(zeros, first))
    except (NotImplementedError, ValueError) as error:  # e.g. "prediction_type not implemented yet: sample"
        raise DiagnosticsError(f"{type(scheduler).__name__}: {error}; choose another sampler") from None


def solve(
    diffusion: DiffusionProcess,
    scheduler,
    steps: int,
    noise: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Samples from ``noise`` (the standard normal x_T) by ``scheduler`` over ``steps`` steps, as
    diffusers' pipelines run it, and the number of network evaluations it made."""
    if diffusion.config.prediction_type != scheduler.config.prediction_type:
        raise DiagnosticsError(
            f"the scheduler predicts {scheduler.config.prediction_type}, the model "
            f"{diffusion.config.prediction_type}; build it from the model's process"
        )
    network = CountingNetwork(diffusion.model)
    set_steps(scheduler, steps, noise.device)
    # The step noise of a stochastic scheduler from ``generator``; a deterministic one takes none.
    seeded = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    x = noise * scheduler.init_noise_sigma
    with torch.inference_mode():
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t)
            # A learned variance's second half is the DDPM step's alone: the solvers read the prediction.
            output = diffusion.prediction(network(model_input, t.expand(len(x)).to(noise.device)), x)
            try:
                x = scheduler.step(output, t, x, **seeded).prev_sample
            except (NotImplementedError, ValueError) as error:  # e.g. a prediction type the solver lacks
                raise DiagnosticsError(
                    f"{type(scheduler).__name__}: {error}; choose another sampler"
                ) from None
    return x, network.calls
