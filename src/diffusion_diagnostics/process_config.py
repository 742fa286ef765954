"""The diffusion process's configuration, in one place and without torch: its keys and defaults,
the values each allows, how diffusers' scheduler config keys map onto it, and its one-line summary.

In the spirit of diffusers' ``ConfigMixin``: :class:`~.diffusion.DiffusionProcess` is built from a
:class:`ProcessConfig` and gives it back (``diffusion.config``); a checkpoint stores it as a dict
(:meth:`ProcessConfig.to_dict`); the loaders read diffusers' scheduler configs through
:meth:`ProcessConfig.from_scheduler_config`; and the workflow's planner (sources.py), which must not
import torch, describes a model with :meth:`ProcessConfig.summary`. The defaults are diffusers'
``DDPMScheduler``'s (and ``DDIMScheduler``'s, which agree on these keys): a config that leaves a key
out means the same here as there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from .errors import DiagnosticsError, first_line

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
# A network that predicts its own variance (2 × its image channels out), its second half v read as
# diffusers' DDPMScheduler reads it: learned_range (improved-diffusion's learn_sigma) gives
# log σ² = frac · log β_t + (1 − frac) · log β̃_t, frac = (v + 1) / 2; learned gives σ² = v itself.
LEARNED_VARIANCES = ("learned_range", "learned")
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")

# diffusers' scheduler config keys that shape the process, and the field each sets (diffusers'
# num_train_timesteps is this package's timesteps; every other key keeps its name).
SCHEDULER_KEYS = {
    "num_train_timesteps": "timesteps",
    "beta_start": "beta_start",
    "beta_end": "beta_end",
    "beta_schedule": "beta_schedule",
    "trained_betas": "trained_betas",
    "prediction_type": "prediction_type",
    "variance_type": "variance_type",
    "clip_sample": "clip_sample",
    "clip_sample_range": "clip_sample_range",
    "set_alpha_to_one": "set_alpha_to_one",
}
# Which timesteps an S-step DDIM run visits: options of each sampling call (SamplingOptions), not
# of the process, though a DDIMScheduler config carries them.
SAMPLING_KEYS = ("timestep_spacing", "steps_offset")
# diffusers keeps these two in log space for its learned-range interpolation; the variances are the same.
LOG_VARIANCES = {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}


def one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    """``value`` if ``allowed`` holds it, else one error line naming the choices."""
    if value not in allowed:
        raise DiagnosticsError(f"{what} '{value}' is not supported; use one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class ProcessConfig:
    """A diffusion process: its noise schedule over ``timesteps`` steps (β from ``beta_start`` to
    ``beta_end`` by ``beta_schedule``, or ``trained_betas`` as given), what the network predicts
    (``prediction_type``), DDPM's reverse variance (``variance_type``), whether its sampler clips
    x̂_0 to ±``clip_sample_range`` (``clip_sample``) and ᾱ after DDIM's last step
    (``set_alpha_to_one``), with diffusers' names and meanings. Fields are in the order
    DiffusionProcess takes them positionally."""

    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True

    def __post_init__(self):
        for name, kind in (("timesteps", int), ("beta_start", float), ("beta_end", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.trained_betas is None:
            one_of(self.beta_schedule, BETA_SCHEDULES, "beta_schedule")
        else:
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in self.trained_betas))
        one_of(self.prediction_type, PREDICTION_TYPES, "prediction_type")
        one_of(self.variance_type, VARIANCE_TYPES + LEARNED_VARIANCES, "variance_type")
        object.__setattr__(self, "clip_sample", bool(self.clip_sample))
        object.__setattr__(self, "clip_sample_range", float(self.clip_sample_range))
        object.__setattr__(self, "set_alpha_to_one", bool(self.set_alpha_to_one))

    @classmethod
    def from_dict(cls, settings: Mapping, where: str = "diffusion settings") -> ProcessConfig:
        """From this package's own key names (a checkpoint's ``diffusion_config``, the config's
        ``diffusion:``); keys left out take the defaults."""
        names = [field.name for field in fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise DiagnosticsError(f"{where}: unknown key {', '.join(unknown)}; it takes {', '.join(names)}")
        return _built(cls, dict(settings), where)

    @classmethod
    def from_scheduler_config(cls, settings: Mapping, where: str) -> ProcessConfig:
        """From diffusers' scheduler config keys (other keys are not the process's and are left
        out); what the samplers here cannot honour is refused in one line naming ``where``."""
        _refuse_unsupported(settings, where)
        arguments = {SCHEDULER_KEYS[key]: value for key, value in settings.items() if key in SCHEDULER_KEYS}
        variance_type = arguments.get("variance_type")
        if variance_type in LOG_VARIANCES:
            arguments["variance_type"] = LOG_VARIANCES[variance_type]
        return _built(cls, arguments, where)

    def to_dict(self) -> dict:
        """The fields as plain values, ``trained_betas`` last and only where the schedule has them:
        what a checkpoint stores and model.json shows."""
        settings = {field.name: getattr(self, field.name) for field in fields(self)}
        trained_betas = settings.pop("trained_betas")
        if trained_betas is not None:
            settings["trained_betas"] = list(trained_betas)
        return settings

    def summary(self) -> str:
        """ "linear β 0.0001 → 0.02, T = 1000, epsilon, fixed_small": the process in one line."""
        if self.trained_betas is not None:
            schedule = "trained betas"
        elif self.beta_schedule == "squaredcos_cap_v2":
            schedule = "squaredcos_cap_v2 β"  # the cosine schedule: its βs do not depend on the two
        else:
            schedule = f"{self.beta_schedule} β {self.beta_start:g} → {self.beta_end:g}"
        return f"{schedule}, T = {self.timesteps}, {self.prediction_type}, {self.variance_type}"


def _built(cls, arguments: dict, where: str) -> ProcessConfig:
    try:
        return cls(**arguments)
    except DiagnosticsError as error:
        raise DiagnosticsError(f"{where}: {error}") from None
    except (TypeError, ValueError) as error:
        raise DiagnosticsError(f"{where}: a value of the wrong type ({first_line(error)})") from None


def _refuse_unsupported(settings: Mapping, where: str) -> None:
    """Scheduler settings that change the sampler in ways this package does not implement."""
    if settings.get("thresholding"):
        raise DiagnosticsError(
            f"{where}: thresholding: true (dynamic thresholding of x̂_0) is not supported; the samplers "
            "here clip x̂_0 to clip_sample_range instead: set thresholding to false in a copy of the "
            "folder to analyse the model that way"
        )
    if settings.get("rescale_betas_zero_snr"):
        raise DiagnosticsError(
            f"{where}: rescale_betas_zero_snr: true is not supported (its last ᾱ is 0, which the "
            "parametrizations here divide by); analyse a model trained on an unrescaled schedule"
        )
