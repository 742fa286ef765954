"""The forward noising process and the DDPM / DDIM samplers around an ε-prediction network.

References: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM) and
Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM). Equation numbers below are theirs.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import DiagnosticsError
from .graphs import can_capture, replay_steps
from .runtime import progress_bar


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


def trailing_timesteps(timesteps: int, num_steps: int) -> list[int]:
    """Descending timesteps for an S-step sampler, "trailing" spacing: the first one is T-1."""
    if not 1 <= num_steps <= timesteps:
        raise DiagnosticsError(
            f"DDIM num_steps must be between 1 and the number of timesteps ({timesteps}), got {num_steps}"
        )
    stride = timesteps / num_steps
    return [round(timesteps - i * stride) - 1 for i in range(num_steps)]


class NonFiniteWatch:
    """Remembers the first timestep whose output held NaN or Inf, on the device.

    Checking every step on the host would cost a device sync per step; this keeps the answer on
    the device and reads it once, after the loop.
    """

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, x: torch.Tensor, t: torch.Tensor) -> None:
        newly_bad = (self.first_bad < 0) & ~torch.isfinite(x).all()
        # In place, so that a step captured as a CUDA graph updates this very tensor on replay.
        self.first_bad.copy_(torch.where(newly_bad, t, self.first_bad))

    def raise_if_bad(self, what: str) -> None:
        bad = int(self.first_bad)
        if bad >= 0:
            raise DiagnosticsError(
                f"{what}: the model's output turned NaN or Inf at timestep {bad}; "
                "the checkpoint is broken or its training diverged"
            )


class DiffusionProcess(nn.Module):
    """An ε-model with its linear β schedule: noising, DDPM and DDIM sampling, DDIM inversion.

    The model is called as ``model(x_t, t)`` with ``t`` an int64 tensor of shape ``(B,)``.
    Schedule tensors are buffers, so ``diffusion.to(device)`` moves them with the model.
    """

    def __init__(
        self,
        model: nn.Module,
        timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        clip_x0: bool = True,
        sample_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.model = model
        self.timesteps = timesteps
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.clip_x0 = clip_x0
        # bfloat16: the network's forward passes run under autocast (faster where the hardware has
        # bf16 matrix units: GPUs, CPUs with AMX), ε comes back as float32 and the sampler's own
        # arithmetic stays float32. None: everything float32. A run-time choice, not saved.
        self.autocast_dtype: torch.dtype | None = None
        # True: on a CUDA device each sampler step is captured once as a CUDA graph and replayed
        # (see .graphs); no effect elsewhere. A run-time choice, not saved.
        self.cuda_graphs = False
        self.sample_shape = tuple(sample_shape or getattr(model, "sample_shape", (1, 28, 28)))

        # Computed in float64 so that ᾱ_t near t = T keeps its digits, then stored as float32.
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)
        alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
        schedule = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bars": alpha_bars,
            "alpha_bars_prev": alpha_bars_prev,
            "sqrt_alpha_bars": alpha_bars.sqrt(),
            "sqrt_one_minus_alpha_bars": (1.0 - alpha_bars).sqrt(),
            # β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t                                  (DDPM eq. 7)
            "posterior_variance": (1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * betas,
            # μ̃_t(x_t, x_0) = c0 · x_0 + ct · x_t                                       (DDPM eq. 7)
            "posterior_mean_coef_x0": alpha_bars_prev.sqrt() * betas / (1.0 - alpha_bars),
            "posterior_mean_coef_xt": alphas.sqrt() * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars),
        }
        for name, values in schedule.items():
            self.register_buffer(name, values.float(), persistent=False)
        # σ_t = √β̃_t, the DDPM step's noise scale, from the float32 variance as the step used it.
        self.register_buffer("posterior_std", self.posterior_variance.sqrt(), persistent=False)
        # Views of this give per-step timestep tensors without allocating one per step.
        self.register_buffer("timestep_ids", torch.arange(timesteps), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.alpha_bars.device

    def schedule_config(self) -> dict:
        return {
            "timesteps": self.timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "clip_x0": self.clip_x0,
        }

    def _model_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, watch: NonFiniteWatch | None = None
    ) -> torch.Tensor:
        if self.autocast_dtype is None:
            eps = self.model(x_t, t)
        else:
            with torch.autocast(x_t.device.type, dtype=self.autocast_dtype):
                eps = self.model(x_t, t).float()
        if watch is not None:
            # The model's own output, since clipping x̂_0 can hide an Inf in ε from x.
            watch.update(eps, t[0])
        return eps

    def _run_steps(
        self,
        step,
        x: torch.Tensor,
        num_steps: int,
        generator: torch.Generator | None,
        progress: bool,
        desc: str,
    ) -> torch.Tensor:
        """``x = step(x, i)`` for i = 0 … num_steps - 1; as CUDA graph replays when asked and on CUDA.

        ``step`` takes ``i`` as an int or as a one-element int64 tensor on x's device (see
        :func:`at_step`), and must give the same result for both (the graph replays the tensor form).
        """
        if self.cuda_graphs and can_capture(x.device):
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

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t - √(1 - ᾱ_t) ε) / √ᾱ_t, the inverse of eq. 4 given ε."""
        return (x_t - extract(self.sqrt_one_minus_alpha_bars, t, x_t.ndim) * eps) / extract(
            self.sqrt_alpha_bars, t, x_t.ndim
        )

    def _maybe_clip(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-1.0, 1.0) if self.clip_x0 else x0

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
    ) -> torch.Tensor:
        """One ancestral step x_t -> x_{t-1} with σ_t² = β̃_t.

        Without clipping, μ̃(x_t, x̂_0(ε)) equals DDPM eq. 11; with clipping x̂_0 is first held to
        the data range, as in the DDPM reference code. Consecutive groups of ``shared_noise``
        images get the same noise z (see :meth:`sample`). ``t``: an int or a one-element tensor.
        """
        eps = self._model_eps(x_t, at_step(self.timestep_ids, t).expand(x_t.shape[0]), watch)
        # One t for the batch: the schedule values are looked up once, nothing is synced per step.
        x0 = self._maybe_clip(self.predict_x0(x_t, t, eps))
        mean, _ = self.posterior_mean_variance(x_t, t, x0)
        if isinstance(t, int) and t == 0:
            return mean  # β̃_0 = 0: the last step adds no noise (a tensor t adds 0 · z instead)
        return mean + at_step(self.posterior_std, t) * self._step_noise(x_t, generator, shared_noise)

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
    ) -> torch.Tensor:
        """Run all T ancestral steps from x_T (DDPM Algorithm 2); stochastic.

        ``shared_noise = k`` gives each run of k consecutive images the same per-step noise
        (common random numbers): the images of an interpolation row then differ only through
        their starting noise, not through independent sampling noise.
        """
        if shared_noise < 1 or x_T.shape[0] % shared_noise:
            raise DiagnosticsError(
                f"shared_noise = {shared_noise} must be at least 1 and divide the batch of {x_T.shape[0]}"
            )
        x = x_T.to(self.device)
        watch = NonFiniteWatch(x.device)
        descending = self.timestep_ids.flip(0)

        def step(x: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
            t = self.timesteps - 1 - i if isinstance(i, int) else at_step(descending, i)
            return self.ddpm_step(x, t, generator, watch, shared_noise)

        x = self._run_steps(step, x, self.timesteps, generator, progress, desc)
        watch.raise_if_bad("DDPM sampling")
        return x

    # --- DDIM ------------------------------------------------------------------------------

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
    ) -> torch.Tensor:
        sqrt_alpha_bar_prev, direction_scale, sigma = coefficients
        eps = self._model_eps(x_t, at_step(self.timestep_ids, t).expand(x_t.shape[0]), watch)
        x0 = self._maybe_clip(self.predict_x0(x_t, t, eps))
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
    ) -> torch.Tensor:
        """One generalised step x_t -> x_{t_prev} with σ controlled by η.              (DDIM eq. 12)"""
        coefficients = self.ddim_coefficients(self.alpha_bars[t], alpha_bar_prev, eta)
        return self._ddim_update(x_t, t, coefficients, eta, generator, watch)

    @torch.inference_mode()
    def sample_ddim(
        self,
        x_T: torch.Tensor,
        num_steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        desc: str = "DDIM",
    ) -> torch.Tensor:
        """DDIM sampling over S trailing timesteps; the last step goes to ᾱ_prev = 1.

        With η = 0 the map x_T -> x_0 is deterministic; with S = T and η = 1 it is DDPM with
        σ_t² = β̃_t.
        """
        x = x_T.to(self.device)
        steps = trailing_timesteps(self.timesteps, num_steps)
        # Every step's coefficients at once, before the loop; the loop only takes views of them.
        alpha_bar_t = self.alpha_bars[steps]
        alpha_bar_prev = torch.cat([alpha_bar_t[1:], torch.ones(1, device=self.device)])
        coefficients = self.ddim_coefficients(alpha_bar_t, alpha_bar_prev, eta)
        steps_on_device = torch.tensor(steps, device=self.device)
        watch = NonFiniteWatch(x.device)

        def step(x: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
            t = steps[i] if isinstance(i, int) else at_step(steps_on_device, i)
            step_coefficients = tuple(at_step(values, i) for values in coefficients)
            return self._ddim_update(x, t, step_coefficients, eta, generator, watch)

        x = self._run_steps(step, x, num_steps, generator, progress, desc)
        watch.raise_if_bad("DDIM sampling")
        return x

    @torch.inference_mode()
    def ddim_invert(self, x_0: torch.Tensor, num_steps: int = 50, progress: bool = False) -> torch.Tensor:
        """Encode x_0 to x_T by running the η = 0 DDIM update forwards (DDIM section 4.3, eq. 13).

        Each step re-uses the ε that the decoder would use at the target timestep, evaluated at
        the current point; no clipping, since clipping is not invertible.
        """
        x = x_0.to(self.device)
        steps = trailing_timesteps(self.timesteps, num_steps)[::-1]
        steps_on_device = torch.tensor(steps, device=self.device)
        # ᾱ before and after each step, all at once: the first step starts from ᾱ = 1 (x_0).
        alpha_bar_next = self.alpha_bars[steps]
        alpha_bar_current = torch.cat([torch.ones(1, device=self.device), alpha_bar_next[:-1]])
        watch = NonFiniteWatch(x.device)

        def step(x: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
            t = steps[i] if isinstance(i, int) else at_step(steps_on_device, i)
            eps = self._model_eps(x, at_step(self.timestep_ids, t).expand(x.shape[0]), watch)
            current, following = at_step(alpha_bar_current, i), at_step(alpha_bar_next, i)
            x0 = (x - (1 - current).sqrt() * eps) / current.sqrt()
            return following.sqrt() * x0 + (1 - following).sqrt() * eps

        x = self._run_steps(step, x, num_steps, None, progress, f"DDIM inversion {num_steps}")
        watch.raise_if_bad("DDIM inversion")
        return x
