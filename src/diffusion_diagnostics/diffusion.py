"""The forward noising process and the DDPM / DDIM samplers around a denoising network.

Schedules, parametrizations and variances carry diffusers' names and meanings, so that a
scheduler config maps onto :class:`DiffusionProcess` one to one.

References: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM);
Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM); Nichol & Dhariwal 2021,
"Improved Denoising Diffusion Probabilistic Models" (the cosine schedule); Salimans & Ho 2022,
"Progressive Distillation for Fast Sampling of Diffusion Models" (v-prediction). Equation numbers
below are theirs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from .errors import DiagnosticsError
from .graphs import can_capture, replay_steps
from .process_config import LEARNED_VARIANCES, TIMESTEP_SPACINGS, VARIANCE_TYPES, ProcessConfig, one_of
from .runtime import autocast_dtype, progress_bar


def extract(coefficients: torch.Tensor, t: torch.Tensor | int, ndim: int) -> torch.Tensor:
    """Pick one schedule value per batch element and shape it to broadcast over an image batch.

    With an int ``t`` (every element at the same timestep, as in sampling) this is a 0-d view of
    the schedule: no gather, no allocation, the same values.
    """
    if isinstance(t, int):
        return coefficients[t]
    return coefficients.gather(0, t).reshape(-1, *([1] * (ndim - 1)))


def at_step(values: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
    """``values[i]`` for an int ``i`` (a 0-d view), or for a one-element int64 tensor ``i`` (a lookup
    on the device). The tensor form is what a step captured as a CUDA graph uses: indexing with a
    0-d tensor would read its value back to the host, which a capture cannot do (see .graphs)."""
    return values[i] if isinstance(i, int) else values.index_select(0, i)


def make_betas(config: ProcessConfig) -> torch.Tensor:
    """β_1 … β_T of ``config`` in float64, as diffusers' schedulers define them (they compute in float32)."""
    timesteps, start, end = config.timesteps, config.beta_start, config.beta_end
    if config.trained_betas is not None:
        betas = torch.tensor(config.trained_betas, dtype=torch.float64)
        if len(betas) != timesteps:
            raise DiagnosticsError(
                f"trained_betas holds {betas.numel()} values; the schedule has {timesteps} timesteps"
            )
    elif config.beta_schedule == "linear":
        betas = torch.linspace(start, end, timesteps, dtype=torch.float64)
    elif config.beta_schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, timesteps, dtype=torch.float64) ** 2
    else:
        # ᾱ(s) = cos²((s + 0.008) / 1.008 · π/2), β_t = 1 - ᾱ(t/T) / ᾱ((t-1)/T), capped at 0.999
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [
                min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), 0.999)
                for i in range(timesteps)
            ],
            dtype=torch.float64,
        )
    if not ((betas > 0) & (betas < 1)).all():
        raise DiagnosticsError(
            f"every β must lie in (0, 1); this schedule has β from {betas.min()} to {betas.max()}"
        )
    return betas


def ddim_timesteps(
    timesteps: int, num_steps: int, spacing: str = "trailing", steps_offset: int = 0
) -> list[int]:
    """Descending timesteps of an S-step DDIM sampler, spaced as diffusers' ``timestep_spacing``.

    trailing: the first one is T-1 (round(T - i·T/S) - 1); leading: i·(T // S) + steps_offset,
    the last one near 0; linspace: S values from 0 to T-1, rounded.
    """
    if not 1 <= num_steps <= timesteps:
        raise DiagnosticsError(
            f"DDIM num_steps must be between 1 and the number of timesteps ({timesteps}), got {num_steps}"
        )
    if one_of(spacing, TIMESTEP_SPACINGS, "timestep_spacing") == "trailing":
        stride = timesteps / num_steps
        return [round(timesteps - i * stride) - 1 for i in range(num_steps)]
    if spacing == "leading":
        steps = [i * (timesteps // num_steps) + steps_offset for i in reversed(range(num_steps))]
        if steps[0] >= timesteps:
            raise DiagnosticsError(
                f"steps_offset {steps_offset} puts the first of {num_steps} leading timesteps at {steps[0]}, "
                f"past the schedule's last ({timesteps - 1}); lower steps_offset"
            )
        return steps
    # As numpy's linspace computes it (i · step, the end exactly), so that the rounding agrees.
    step = (timesteps - 1) / (num_steps - 1) if num_steps > 1 else 0.0
    points = [i * step for i in range(num_steps - 1)] + [float(timesteps - 1)] if num_steps > 1 else [0.0]
    return [round(point) for point in reversed(points)]


def trailing_timesteps(timesteps: int, num_steps: int) -> list[int]:
    """Descending timesteps for an S-step sampler, "trailing" spacing: the first one is T-1."""
    return ddim_timesteps(timesteps, num_steps, "trailing")


@dataclass(frozen=True)
class SamplingOptions:
    """How a sampler runs, given per call; none of it is stored on the model.

    - ``clip_x0``: hold each step's x̂_0 to [-r, r] (diffusers' ``clip_sample``, r its
      ``clip_sample_range``). None, the default: DDPM clips as the model's own ``clip_sample``
      says (its scheduler config's), DDIM does not clip, since clipping breaks DDIM's map
      (docs/metrics.md, DDIM fidelity); DDIM inversion never clips.
    - ``variance_type``: DDPM's σ_t², ``fixed_small`` (β̃_t) or ``fixed_large`` (β_t); None takes
      the model's own.
    - ``precision``: ``float32``, or ``bfloat16`` for the network's forward passes under autocast
      (faster where the hardware has bf16 units; the sampler's own arithmetic stays float32).
    - ``cuda_graphs``: on a CUDA device, capture one step as a CUDA graph and replay it (.graphs);
      no effect elsewhere.
    - ``timestep_spacing``, ``steps_offset``: which timesteps an S-step DDIM visits
      (:func:`ddim_timesteps`); DDPM always visits all T.
    - ``use_clipped_model_output``: where DDIM clips x̂_0, take ε̂ again from the clipped x̂_0 for
      the step (diffusers' DDIMScheduler option of that name; denoising-diffusion-pytorch's
      ``ddim_sample`` always does); by default, as diffusers', ε̂ stays the network's.
    """

    clip_x0: bool | None = None
    variance_type: str | None = None
    precision: str = "float32"
    cuda_graphs: bool = False
    timestep_spacing: str = "trailing"
    steps_offset: int = 0
    use_clipped_model_output: bool = False

    def __post_init__(self):
        autocast_dtype(self.precision)
        if self.variance_type is not None:
            one_of(self.variance_type, VARIANCE_TYPES, "variance_type")
        one_of(self.timestep_spacing, TIMESTEP_SPACINGS, "timestep_spacing")
        if self.steps_offset < 0:
            raise DiagnosticsError(f"steps_offset must be at least 0, got {self.steps_offset}")


class NonFiniteWatch:
    """Remembers the first timestep whose output held NaN or Inf, on the device.

    Checking every step on the host would cost a device sync per step; this keeps the answer on
    the device and reads it once, after the loop.
    """

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, x: torch.Tensor, t: torch.Tensor) -> None:
        # The smallest and largest values are finite exactly when all are (both reductions carry a
        # NaN through): one pass, where isfinite(x).all() first writes a bool image, about 30 µs
        # against 160 µs a step for a grid of 72 digits on a CPU.
        all_finite = torch.isfinite(torch.stack(torch.aminmax(x))).all()
        newly_bad = (self.first_bad < 0) & ~all_finite
        # In place, so that a step captured as a CUDA graph updates this very tensor on replay.
        self.first_bad.copy_(torch.where(newly_bad, t, self.first_bad))

    def raise_if_bad(
        self, what: str, cause: str = "the checkpoint is broken or its training diverged"
    ) -> None:
        bad = int(self.first_bad)
        if bad >= 0:
            raise DiagnosticsError(f"{what}: the model's output turned NaN or Inf at timestep {bad}; {cause}")


class DiffusionProcess(nn.Module):
    """A denoising network with its noise schedule: noising, DDPM and DDIM sampling, DDIM inversion.

    The network is called as ``model(x_t, t)`` with ``t`` an int64 tensor of shape ``(B,)``; what
    it returns is read according to ``prediction_type`` (ε, v or x_0) by :meth:`eps_and_x0`, the
    one place that knows the parametrization. The process is a :class:`ProcessConfig`, given as
    ``config`` or as its fields (positional or by name, the rest taking its defaults) and kept as
    ``self.config``. Its ``clip_sample`` is only DDPM's default for ``clip_x0`` (see
    :class:`SamplingOptions`). Schedule tensors are buffers, so ``diffusion.to(device)`` moves them
    with the model.
    """

    def __init__(
        self,
        model: nn.Module,
        *settings,
        config: ProcessConfig | None = None,
        sample_shape: tuple[int, ...] | None = None,
        **named_settings,
    ):
        super().__init__()
        if config is not None and (settings or named_settings):
            raise TypeError("give the process either as config or as its fields, not both")
        self.model = model
        self.config = config if config is not None else ProcessConfig(*settings, **named_settings)
        self.sample_shape = tuple(sample_shape or getattr(model, "sample_shape", (1, 28, 28)))

        # Computed in float64 so that ᾱ_t near t = T keeps its digits, then stored as float32.
        betas = make_betas(self.config)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        schedule = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alpha_bars": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alpha_bars": (1.0 - alphas_cumprod).sqrt(),
            # β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t                                  (DDPM eq. 7)
            "posterior_variance": (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod) * betas,
            # μ̃_t(x_t, x_0) = c0 · x_0 + ct · x_t                                       (DDPM eq. 7)
            "posterior_mean_coef_x0": alphas_cumprod_prev.sqrt() * betas / (1.0 - alphas_cumprod),
            "posterior_mean_coef_xt": alphas.sqrt() * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        }
        for name, values in schedule.items():
            self.register_buffer(name, values.float(), persistent=False)
        # σ_t of the DDPM step, from the float32 variance as the step uses it: σ_t² = β̃_t
        # (fixed_small) or β_t (fixed_large), DDPM section 3.2.
        self.register_buffer("ddpm_std_small", self.posterior_variance.sqrt(), persistent=False)
        # The two ends of a learned variance's range, in log space (β̃_0 = 0 taken as β̃_1).
        clipped = torch.cat([schedule["posterior_variance"][1:2], schedule["posterior_variance"][1:]])
        self.register_buffer("posterior_log_variance_clipped", clipped.log().float(), persistent=False)
        self.register_buffer("log_betas", betas.log().float(), persistent=False)
        self.register_buffer("ddpm_std_large", self.betas.sqrt(), persistent=False)
        # ᾱ after a DDIM step whose target lies before t = 0 (diffusers' final_alpha_cumprod).
        self.register_buffer(
            "final_alpha_cumprod",
            torch.ones(()) if self.config.set_alpha_to_one else self.alphas_cumprod[0].clone(),
            persistent=False,
        )
        # Views of this give per-step timestep tensors without allocating one per step.
        self.register_buffer("timestep_ids", torch.arange(self.timesteps), persistent=False)

    def rebuilt(self, model: nn.Module | None = None, **changes) -> DiffusionProcess:
        """This process around another network (``model``: a wrapper of this one, say) or read with
        other settings (``changes`` of its config), on this process's device."""
        config = dataclasses.replace(self.config, **changes) if changes else self.config
        network = self.model if model is None else model
        return DiffusionProcess(network, config=config, sample_shape=self.sample_shape).to(self.device)

    # The process's settings that the samplers and analyses read; the rest are in self.config.
    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    @property
    def variance_type(self) -> str:
        return self.config.variance_type

    @property
    def clip_sample(self) -> bool:
        return self.config.clip_sample

    @property
    def clip_sample_range(self) -> float:
        return self.config.clip_sample_range

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def alpha_bars(self) -> torch.Tensor:
        """ᾱ_t, the name this package used before taking diffusers' ``alphas_cumprod``."""
        return self.alphas_cumprod

    def schedule_config(self) -> dict:
        """The process as plain values (:meth:`ProcessConfig.to_dict`): what a checkpoint stores."""
        return self.config.to_dict()

    def describe(self) -> str:
        """One line for logs and captions: schedule, T, parametrization and variance."""
        return self.config.summary()

    # --- the parametrization ---------------------------------------------------------------

    def eps_and_x0(
        self, x_t: torch.Tensor, t: torch.Tensor | int, output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂_0) from the network's ``output`` at x_t, t, whatever it predicts.

        With x_t = √ᾱ x_0 + √(1-ᾱ) ε (DDPM eq. 4) and v = √ᾱ ε - √(1-ᾱ) x_0 (Salimans & Ho,
        section 4), each of ε, v and x_0 gives the other two.
        """
        output = self.prediction(output, x_t)
        a, s = (
            extract(self.sqrt_alpha_bars, t, x_t.ndim),
            extract(self.sqrt_one_minus_alpha_bars, t, x_t.ndim),
        )
        if self.prediction_type == "epsilon":
            return output, (x_t - s * output) / a
        if self.prediction_type == "v_prediction":
            return a * output + s * x_t, a * x_t - s * output
        return (x_t - a * output) / s, output

    @property
    def learned_variance(self) -> bool:
        return self.variance_type in LEARNED_VARIANCES

    def prediction(self, output: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The network's prediction of ε, v or x_0: its whole output, or for a learned variance its
        first half (the second is the variance's, :meth:`learned_log_variance`)."""
        return output[:, : x_t.shape[1]] if self.learned_variance else output

    def learned_log_variance(
        self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> torch.Tensor:
        """log σ² of the reverse step from the output's second half v: for ``learned_range``
        (improved-diffusion eq. 15) frac · log β_t + (1 − frac) · log β̃_t with frac = (v + 1) / 2,
        β̃_0 taken as β̃_1 (its posterior_log_variance_clipped; at t = 0 sampling adds no noise, so
        only the bound reads it); for ``learned``, log v (diffusers' σ² = v; v ≤ 0 gives no finite
        σ, which the samplers' watch reports)."""
        if self.variance_type == "learned":
            return output[:, x_t.shape[1] :].float().log()
        frac = (output[:, x_t.shape[1] :].float() + 1) / 2
        min_log = extract(self.posterior_log_variance_clipped, t, x_t.ndim)
        max_log = extract(self.log_betas, t, x_t.ndim)
        return frac * max_log + (1 - frac) * min_log

    def velocity(self, x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """v = √ᾱ_t ε - √(1 - ᾱ_t) x_0, the v-prediction target."""
        return (
            extract(self.sqrt_alpha_bars, t, x_0.ndim) * noise
            - extract(self.sqrt_one_minus_alpha_bars, t, x_0.ndim) * x_0
        )

    def training_target(self, x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """What the network learns to output for x_t = add_noise(x_0, t, noise): ε, v or x_0."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.velocity(x_0, noise, t)
        return x_0

    def _network(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        autocast: torch.dtype | None = None,
        watch: NonFiniteWatch | None = None,
    ) -> torch.Tensor:
        if autocast is None:
            output = self.model(x_t, t)
        else:
            with torch.autocast(x_t.device.type, dtype=autocast):
                output = self.model(x_t, t).float()
        if watch is not None:
            # The network's own output, since clipping x̂_0 can hide an Inf from x.
            watch.update(output, t[0])
        return output

    def _denoise(
        self,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        clip: bool,
        autocast: torch.dtype | None,
        watch: NonFiniteWatch | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ε̂, x̂_0, the network's output) at x_t for one t shared by the batch (an int or a
        one-element tensor)."""
        output = self._network(x_t, at_step(self.timestep_ids, t).expand(x_t.shape[0]), autocast, watch)
        eps, x0 = self.eps_and_x0(x_t, t, output)
        if clip:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return eps, x0, output

    # Whether x̂_0 is clipped, for clip_x0 as SamplingOptions holds it: DDPM as the model's
    # scheduler does, DDIM only when asked.
    def _ddpm_clips(self, clip_x0: bool | None) -> bool:
        return self.clip_sample if clip_x0 is None else clip_x0

    @staticmethod
    def _ddim_clips(clip_x0: bool | None) -> bool:
        return bool(clip_x0)

    def _run_steps(
        self,
        step,
        x: torch.Tensor,
        num_steps: int,
        generator: torch.Generator | None,
        options: SamplingOptions,
        progress: bool,
        desc: str,
    ) -> torch.Tensor:
        """``x = step(x, i)`` for i = 0 … num_steps - 1; as CUDA graph replays when asked and on CUDA.

        ``step`` takes ``i`` as an int or as a one-element int64 tensor on x's device (see
        :func:`at_step`), and must give the same result for both (the graph replays the tensor form).
        """
        if options.cuda_graphs and can_capture(x.device):
            return replay_steps(step, x, num_steps, generator, progress, desc)
        for i in progress_bar(range(num_steps), desc=desc, disable=not progress):
            x = step(x, i)
        return x

    # --- forward process -------------------------------------------------------------------

    def add_noise(
        self,
        x_0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I); returns (x_t, noise).    (DDPM eq. 4)"""
        if noise is None:
            noise = torch.randn(x_0.shape, generator=generator, device=x_0.device, dtype=x_0.dtype)
        x_t = (
            extract(self.sqrt_alpha_bars, t, x_0.ndim) * x_0
            + extract(self.sqrt_one_minus_alpha_bars, t, x_0.ndim) * noise
        )
        return x_t, noise

    # --- DDPM ------------------------------------------------------------------------------

    def posterior_mean_variance(
        self, x_t: torch.Tensor, t: torch.Tensor | int, x_0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0).                              (DDPM eq. 6-7)"""
        mean = (
            extract(self.posterior_mean_coef_x0, t, x_t.ndim) * x_0
            + extract(self.posterior_mean_coef_xt, t, x_t.ndim) * x_t
        )
        return mean, extract(self.posterior_variance, t, x_t.ndim)

    def ddpm_step(
        self,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        generator: torch.Generator | None = None,
        watch: NonFiniteWatch | None = None,
        shared_noise: int = 1,
        clip_x0: bool | None = None,
        autocast: torch.dtype | None = None,
        variance_type: str | None = None,
    ) -> torch.Tensor:
        """One ancestral step x_t -> x_{t-1}: mean μ̃(x_t, x̂_0), σ_t² by ``variance_type``.

        Without clipping, μ̃(x_t, x̂_0(ε)) equals DDPM eq. 11; with clipping x̂_0 is first held to
        the data range, as in the DDPM reference code and diffusers. Consecutive groups of
        ``shared_noise`` images get the same noise z (see :meth:`sample`). ``t``: an int or a
        one-element tensor; ``clip_x0`` and ``variance_type`` None: the model's own.
        """
        clip = self._ddpm_clips(clip_x0)
        variance = variance_type or self.variance_type
        _, x0, output = self._denoise(x_t, t, clip, autocast, watch)
        # One t for the batch: the schedule values are looked up once, nothing is synced per step.
        mean, _ = self.posterior_mean_variance(x_t, t, x0)
        if isinstance(t, int) and t == 0:
            return mean  # the last step adds no noise (a tensor t adds 0 · z instead, β̃_0 = 0)
        if variance in LEARNED_VARIANCES:
            std = (0.5 * self.learned_log_variance(output, x_t, t)).exp()
        else:
            std = at_step(self.ddpm_std_small if variance == "fixed_small" else self.ddpm_std_large, t)
        if not isinstance(t, int):
            std = std * (t > 0)  # fixed_large's σ_0 = √β_0 is not 0: the last step must add none
        return mean + std * self._step_noise(x_t, generator, shared_noise)

    @staticmethod
    def _step_noise(x: torch.Tensor, generator: torch.Generator | None, shared: int = 1) -> torch.Tensor:
        """Standard-normal noise shaped like ``x``; each run of ``shared`` consecutive images gets
        the same draw."""
        shape = (x.shape[0] // shared, *x.shape[1:])
        noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        if shared == 1:
            return noise
        # repeat_interleave, written so that no size is read back from the GPU (CUDA graphs)
        return noise.unsqueeze(1).expand(-1, shared, *x.shape[1:]).reshape(x.shape)

    @torch.inference_mode()
    def sample(
        self,
        x_T: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
        desc: str = "DDPM",
        shared_noise: int = 1,
        options: SamplingOptions | None = None,
    ) -> torch.Tensor:
        """Run all T ancestral steps from x_T (DDPM Algorithm 2); stochastic.

        ``shared_noise = k`` gives each run of k consecutive images the same per-step noise
        (common random numbers): the images of an interpolation row then differ only through
        their starting noise, not through independent sampling noise.
        """
        options = options or SamplingOptions()
        if shared_noise < 1 or x_T.shape[0] % shared_noise:
            raise DiagnosticsError(
                f"shared_noise = {shared_noise} must be at least 1 and divide the batch of {x_T.shape[0]}"
            )
        x = x_T.to(self.device)
        watch = NonFiniteWatch(x.device)
        descending = self.timestep_ids.flip(0)
        clip, autocast = self._ddpm_clips(options.clip_x0), autocast_dtype(options.precision)

        def step(x: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
            t = self.timesteps - 1 - i if isinstance(i, int) else at_step(descending, i)
            return self.ddpm_step(x, t, generator, watch, shared_noise, clip, autocast, options.variance_type)

        x = self._run_steps(step, x, self.timesteps, generator, options, progress, desc)
        if (options.variance_type or self.variance_type) == "learned":
            # diffusers' learned takes the half as σ² itself: where it is ≤ 0 there is no σ.
            watch.raise_if_bad(
                "DDPM sampling",
                "variance_type learned reads the network's second half as σ² itself, which must be "
                "positive; was the model trained for learned_range?",
            )
        watch.raise_if_bad("DDPM sampling")
        return x

    # --- DDIM ------------------------------------------------------------------------------

    def ddim_schedule(
        self, num_steps: int, options: SamplingOptions | None = None
    ) -> tuple[list[int], torch.Tensor]:
        """The S timesteps a DDIM run visits and ᾱ after each step.

        As diffusers' DDIMScheduler: the step from t goes to t - T // S, and a target before
        t = 0 has ᾱ = 1 (``set_alpha_to_one``, else ᾱ_0). Where S divides T (the usual case)
        that target is the next timestep visited.
        """
        options = options or SamplingOptions()
        steps = ddim_timesteps(self.timesteps, num_steps, options.timestep_spacing, options.steps_offset)
        targets = torch.tensor(steps, device=self.device) - self.timesteps // num_steps
        alpha_bar_prev = torch.where(
            targets >= 0, self.alphas_cumprod[targets.clamp(min=0)], self.final_alpha_cumprod
        )
        return steps, alpha_bar_prev

    @staticmethod
    def ddim_coefficients(
        alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """√ᾱ_prev, √(1 - ᾱ_prev - σ²) and σ of DDIM eq. 12, elementwise: for one step or a whole run."""
        # σ_t(η) = η √((1 - ᾱ_prev) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_prev)                  (DDIM eq. 16)
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()
        return alpha_bar_prev.sqrt(), (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt(), sigma

    def _ddim_update(
        self,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        coefficients: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        eta: float,
        generator: torch.Generator | None,
        watch: NonFiniteWatch | None,
        clip: bool,
        autocast: torch.dtype | None,
        rederive: bool = False,
    ) -> torch.Tensor:
        sqrt_alpha_bar_prev, direction_scale, sigma = coefficients
        eps, x0, _ = self._denoise(x_t, t, clip, autocast, watch)
        if rederive:
            # ε̂ again from the clipped x̂_0 (diffusers' use_clipped_model_output): x_t = √ᾱ x̂_0 + √(1-ᾱ) ε̂
            a, s = (
                extract(self.sqrt_alpha_bars, t, x_t.ndim),
                extract(self.sqrt_one_minus_alpha_bars, t, x_t.ndim),
            )
            eps = (x_t - a * x0) / s
        # x_prev = √ᾱ_prev x̂_0 + √(1 - ᾱ_prev - σ²) ε + σ z                             (DDIM eq. 12)
        x_prev = sqrt_alpha_bar_prev * x0 + direction_scale * eps
        if eta > 0:
            x_prev = x_prev + sigma * self._step_noise(x_t, generator)
        return x_prev

    def ddim_step(
        self,
        x_t: torch.Tensor,
        t: int,
        alpha_bar_prev: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        watch: NonFiniteWatch | None = None,
        clip_x0: bool | None = None,
    ) -> torch.Tensor:
        """One generalised step x_t -> x_{t_prev} with σ controlled by η.              (DDIM eq. 12)"""
        coefficients = self.ddim_coefficients(self.alphas_cumprod[t], alpha_bar_prev, eta)
        return self._ddim_update(x_t, t, coefficients, eta, generator, watch, self._ddim_clips(clip_x0), None)

    @torch.inference_mode()
    def sample_ddim(
        self,
        x_T: torch.Tensor,
        num_steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        desc: str = "DDIM",
        options: SamplingOptions | None = None,
    ) -> torch.Tensor:
        """DDIM sampling over S timesteps (:meth:`ddim_schedule`).

        With η = 0 the map x_T -> x_0 is deterministic; with S = T and η = 1 it is DDPM with
        σ_t² = β̃_t.
        """
        options = options or SamplingOptions()
        x = x_T.to(self.device)
        steps, alpha_bar_prev = self.ddim_schedule(num_steps, options)
        # Every step's coefficients at once, before the loop; the loop only takes views of them.
        coefficients = self.ddim_coefficients(self.alphas_cumprod[steps], alpha_bar_prev, eta)
        steps_on_device = torch.tensor(steps, device=self.device)
        watch = NonFiniteWatch(x.device)
        clip, autocast = self._ddim_clips(options.clip_x0), autocast_dtype(options.precision)
        rederive = clip and options.use_clipped_model_output

        def step(x: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
            t = steps[i] if isinstance(i, int) else at_step(steps_on_device, i)
            step_coefficients = tuple(at_step(values, i) for values in coefficients)
            return self._ddim_update(x, t, step_coefficients, eta, generator, watch, clip, autocast, rederive)

        x = self._run_steps(step, x, num_steps, generator, options, progress, desc)
        watch.raise_if_bad("DDIM sampling")
        return x

    @torch.inference_mode()
    def ddim_invert(
        self,
        x_0: torch.Tensor,
        num_steps: int = 50,
        progress: bool = False,
        options: SamplingOptions | None = None,
    ) -> torch.Tensor:
        """Encode x_0 to x_T by running the η = 0 DDIM update forwards (DDIM section 4.3, eq. 13).

        The steps of :meth:`sample_ddim` in reverse: each re-uses the ε that the decoder would use
        at its timestep, evaluated at the current point. Never clipped (``options.clip_x0`` is
        ignored), since clipping is not invertible.
        """
        options = options or SamplingOptions()
        x = x_0.to(self.device)
        steps, alpha_bar_prev = self.ddim_schedule(num_steps, options)
        steps = steps[::-1]
        steps_on_device = torch.tensor(steps, device=self.device)
        # ᾱ before and after each step, all at once: the first step starts from the decoder's last ᾱ.
        alpha_bar_current, alpha_bar_next = alpha_bar_prev.flip(0), self.alphas_cumprod[steps]
        watch = NonFiniteWatch(x.device)
        autocast = autocast_dtype(options.precision)

        def step(x: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
            t = steps[i] if isinstance(i, int) else at_step(steps_on_device, i)
            eps, _, _ = self._denoise(x, t, False, autocast, watch)
            current, following = at_step(alpha_bar_current, i), at_step(alpha_bar_next, i)
            x0 = (x - (1 - current).sqrt() * eps) / current.sqrt()
            return following.sqrt() * x0 + (1 - following).sqrt() * eps

        x = self._run_steps(step, x, num_steps, None, options, progress, f"DDIM inversion {num_steps}")
        watch.raise_if_bad("DDIM inversion")
        return x
