"""How to sample, said once: a :class:`Sampler` value that every consumer takes (the interpolation
grids, sample quality, DDIM fidelity, real-digit interpolation, the sampler table), and one batched
:func:`decode` (and :func:`invert`) behind it.

The kinds: this package's ``ddpm`` (all T ancestral steps) and ``ddim`` (S steps at any η), and
every solver :mod:`.solvers` builds from the model's process (diffusers' schedulers, with the
``diffusers`` extra).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .diffusion import DiffusionProcess, SamplingOptions
from .errors import DiagnosticsError
from .interpolation import interpolate
from .runtime import model_device

# This package's own samplers; every other kind is one of diffusers' solvers (.solvers).
OURS = ("ddpm", "ddim")
# diffusers' solvers whose map from noise to image is stochastic (ours: DDPM, and DDIM at η > 0).
STOCHASTIC_SOLVERS = ("euler_ancestral",)


@dataclass(frozen=True)
class Sampler:
    """How to sample a model.

    - ``kind``: ``ddpm``, ``ddim``, or a solver of :mod:`.solvers` (a name of ``SOLVERS`` or any
      diffusers scheduler class's name).
    - ``steps``: the number of steps S (DDPM always takes all T and does not read it).
    - ``eta``: DDIM's η (0: its deterministic map; 1: ancestral over the strided schedule).
    - ``spacing``: which timesteps an S-step run visits (``leading``, ``linspace``, ``trailing``,
      or for the solvers that have them ``karras`` / ``lu_lambdas`` noise levels); None takes
      ``options.timestep_spacing`` (the model's own).
    - ``options``: clipping, DDPM's variance, precision and CUDA graphs (:class:`SamplingOptions`).
      diffusers' solvers clip x̂_0 only where ``options.clip_x0`` is True, as this package's DDIM,
      and run their forward passes in float32.
    """

    kind: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    spacing: str | None = None
    options: SamplingOptions = field(default_factory=SamplingOptions)

    def __post_init__(self):
        if not self.kind:
            raise DiagnosticsError("a sampler needs a kind: ddpm, ddim or a diffusers solver's name")
        if self.steps < 1:
            raise DiagnosticsError(f"a sampler takes at least 1 step, got {self.steps}")
        if self.eta < 0:
            raise DiagnosticsError(f"DDIM's eta must be at least 0, got {self.eta}")
        if self.eta and self.kind != "ddim":
            raise DiagnosticsError(f"eta is DDIM's; sampler '{self.kind}' takes none")

    @property
    def timestep_spacing(self) -> str:
        return self.spacing or self.options.timestep_spacing

    @property
    def deterministic(self) -> bool:
        """Whether the same noise always decodes to the same images."""
        if self.kind in OURS:
            return self.kind == "ddim" and self.eta == 0
        return self.kind not in STOCHASTIC_SOLVERS

    @property
    def label(self) -> str:
        if self.kind == "ddpm":
            return "DDPM"
        name = "DDIM" if self.kind == "ddim" else self.kind
        return f"{name} {self.steps}" + (f" η={self.eta:g}" if self.eta else "")

    def check(self, diffusion: DiffusionProcess) -> None:
        """One error line where this sampler cannot run on ``diffusion`` (an unknown kind, a spacing
        it lacks, fewer steps than it needs, the model's prediction type), before anything is
        decoded."""
        if self.kind == "ddim":
            self.ddim_options()
        elif self.kind not in OURS:
            from .solvers import check_step

            check_step(self._scheduler(diffusion), self.steps, diffusion.sample_shape)

    def run(
        self,
        diffusion: DiffusionProcess,
        noise: torch.Tensor,
        generator: torch.Generator | None = None,
        shared_noise: int = 1,
        progress: bool = False,
        desc: str = "",
    ) -> torch.Tensor:
        """The images decoded from one batch of ``noise`` (standard normal x_T). A stochastic sampler
        draws its step noise from ``generator``; ``shared_noise`` (DDPM) as
        :meth:`DiffusionProcess.sample` takes it."""
        desc = f"{self.label} {desc}".strip()
        if self.kind == "ddpm":
            return diffusion.sample(noise, generator, progress, desc, shared_noise, self.options)
        if shared_noise != 1:
            raise DiagnosticsError(f"shared per-step noise is DDPM's; sampler {self.label} takes none")
        if self.kind == "ddim":
            return diffusion.sample_ddim(
                noise, self.steps, self.eta, generator, progress, desc, self.ddim_options()
            )
        from .solvers import solve

        return solve(diffusion, self._scheduler(diffusion), self.steps, noise, generator)[0]

    def ddim_options(self) -> SamplingOptions:
        """The options with this sampler's spacing (one error line for a spacing DDIM lacks)."""
        return dataclasses.replace(self.options, timestep_spacing=self.timestep_spacing)

    def _scheduler(self, diffusion: DiffusionProcess):
        try:
            import diffusers  # noqa: F401
        except ImportError:
            raise DiagnosticsError(
                f"sampler '{self.kind}' is neither ddpm nor ddim, and the other solvers are diffusers', "
                'which is not installed: pip install -e ".[diffusers]"'
            ) from None
        from .solvers import build_scheduler

        return build_scheduler(
            self.kind, diffusion.config, self.timestep_spacing, clip=self.options.clip_x0 is True
        )


def in_batches(
    function: Callable[[torch.Tensor, str], torch.Tensor],
    inputs: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """``function(batch, "batch i/n")`` over ``inputs`` batch by batch, the results on the CPU;
    only one batch is on the device at a time."""
    if batch_size < 1:
        raise DiagnosticsError(f"batch_size must be at least 1, got {batch_size}")
    batches = inputs.split(batch_size)
    outputs = []
    for index, batch in enumerate(batches):
        outputs.append(function(batch.to(device), f"batch {index + 1}/{len(batches)}").cpu())
    return torch.cat(outputs)


def decode(
    diffusion: DiffusionProcess,
    sampler: Sampler,
    noise: torch.Tensor,
    batch_size: int = 72,
    generator: torch.Generator | None = None,
    shared_noise: int = 1,
    progress: bool = True,
) -> torch.Tensor:
    """The images ``sampler`` decodes from ``noise``, batch by batch on the model's device, on the
    CPU. The step noise of a stochastic sampler comes from ``generator`` (on the model's device),
    drawn batch after batch."""
    sampler.check(diffusion)

    def run(batch, desc):
        return sampler.run(diffusion, batch, generator, shared_noise, progress, desc)

    return in_batches(run, noise.float(), batch_size, model_device(diffusion))


def invert(
    diffusion: DiffusionProcess,
    sampler: Sampler,
    images: torch.Tensor,
    batch_size: int = 72,
    progress: bool = True,
) -> torch.Tensor:
    """``images`` taken to noise by DDIM inversion over ``sampler``'s steps and spacing (never
    clipped), batch by batch: the noise that ``sampler`` at η = 0, unclipped, decodes back to them."""
    if sampler.kind != "ddim":
        raise DiagnosticsError(f"inversion runs DDIM backwards; sampler {sampler.label} cannot be inverted")
    options = sampler.ddim_options()

    def run(batch, desc):
        return diffusion.ddim_invert(batch, sampler.steps, progress, options)

    return in_batches(run, images.float(), batch_size, model_device(diffusion))


def interpolation_grid(
    diffusion: DiffusionProcess,
    z0: torch.Tensor,
    z1: torch.Tensor,
    steps: int = 7,
    sampler: Sampler | None = None,
    interpolation: str = "lerp",
    batch_size: int = 72,
    generator: torch.Generator | None = None,
    shared_noise: bool = False,
    progress: bool = True,
) -> torch.Tensor:
    """Decode the interpolated noise between given endpoints by ``sampler`` (DDPM when None);
    images ``(n, steps, C, H, W)`` in [-1, 1], row i the path from z0[i] to z1[i].

    ``shared_noise`` (DDPM; no effect on the other samplers): every image of a row gets the same
    per-step noise, so a row changes only with its starting noise (common random numbers).
    """
    sampler = sampler or Sampler("ddpm")
    latents = interpolate(z0.float(), z1.float(), steps, interpolation).flatten(0, 1)
    group = steps if shared_noise and sampler.kind == "ddpm" else 1  # the other samplers: no effect
    if group > 1 and batch_size >= 1:
        # A row's images must share a batch to share its noise: whole rows per batch.
        batch_size = max(steps, batch_size - batch_size % steps)
    images = decode(diffusion, sampler, latents, batch_size, generator, group, progress)
    return images.reshape(len(z0), steps, *images.shape[1:])
