"""Sample quality against cost for several samplers on one model: every cell (a sampler at a number
of steps) decodes the same seeded starting noises, its network evaluations counted, scored by the
judge against the held-out digits as sample_quality scores them, timed, and, for the deterministic
samplers, compared with the same noise solved with many steps (how far from the ODE's own answer,
whatever the judge thinks).

The samplers: ``ddim`` (this package's, η = 0, unclipped) and every solver :mod:`.solvers` builds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .diffusion import DiffusionProcess, SamplingOptions
from .errors import DiagnosticsError
from .quality import DISTANCES, Judgement, confidence_stats, distances_to
from .solvers import CountingNetwork, build_scheduler, set_steps, solve

log = logging.getLogger(__name__)

# This package's own samplers; the rest are diffusers' (.solvers).
OURS = ("ddim",)
# Samplers whose map from noise to image is stochastic: no ODE error is measured for them.
STOCHASTIC = ("euler_ancestral",)


@dataclass(frozen=True)
class Cell:
    """One sampler at one number of steps, visiting its timesteps by ``spacing``."""

    sampler: str
    steps: int
    spacing: str = "trailing"


def available_samplers(samplers: list[str]) -> list[str]:
    """``samplers`` as they can run here: without diffusers (the optional extra), ours alone, and
    one log line saying how to get the rest."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        ours = [sampler for sampler in samplers if sampler in OURS]
        left = [sampler for sampler in samplers if sampler not in OURS]
        if left:
            log.warning("%s need diffusers: pip install -e \".[diffusers]\"; the table has %s only",
                        ", ".join(left), ", ".join(ours) or "nothing")  # fmt: skip
        if not ours:
            raise DiagnosticsError(
                f"the samplers {', '.join(left)} need diffusers, which is not installed: "
                'pip install -e ".[diffusers]", or name ddim among samplers.samplers'
            ) from None
        return ours
    return list(samplers)


def decode(
    diffusion: DiffusionProcess, cell: Cell, noise: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, int]:
    """The images ``cell`` decodes from ``noise``, and the network evaluations it made (counted)."""
    if cell.sampler == "ddim":
        counting = CountingNetwork(diffusion.model)
        process = DiffusionProcess(counting, config=diffusion.config, sample_shape=diffusion.sample_shape)
        images = process.sample_ddim(
            noise, cell.steps, options=SamplingOptions(timestep_spacing=cell.spacing)
        )
        return images, counting.calls
    # Unclipped, as this package's DDIM: clipping x̂_0 keeps an ODE solver from converging.
    scheduler = build_scheduler(cell.sampler, diffusion.config, cell.spacing, clip=False)
    return solve(diffusion, scheduler, cell.steps, noise, torch.Generator(noise.device).manual_seed(seed))


def sampler_rows(
    diffusion: DiffusionProcess,
    judge: Callable[[torch.Tensor], Judgement],
    reference: Judgement,
    cells: list[Cell],
    noise: torch.Tensor,
    reference_steps: int = 200,
    batch_size: int = 250,
    seed: int = 0,
    nearest_k: int = 5,
) -> list[dict]:
    """One row per cell: its counted NFE, seconds per sample, the judge's scores against
    ``reference`` (the held-out digits' judgement) and, for a deterministic sampler, the RMSE to
    the same sampler with ``reference_steps`` steps from the same noise. ``judge`` takes the
    model's images (and brings them to the digits' size where they differ)."""
    if not cells:
        raise DiagnosticsError("the sampler table has no cells; name at least one sampler and one step count")
    for cell in cells:  # every sampler and step count that cannot run fails before any cell runs
        if cell.sampler in OURS:
            SamplingOptions(timestep_spacing=cell.spacing)
        else:
            set_steps(build_scheduler(cell.sampler, diffusion.config, cell.spacing, clip=False), cell.steps)
    answers: dict[tuple[str, str], torch.Tensor] = {}
    rows = []
    for cell in cells:
        started = time.perf_counter()
        images, evaluations = _decoded(diffusion, cell, noise, batch_size, seed)
        seconds = time.perf_counter() - started
        row = {"sampler": cell.sampler, "spacing": cell.spacing, "steps": cell.steps, "nfe": evaluations}
        row["seconds_per_sample"] = seconds / len(noise)
        judged = judge(images)
        row.update(distances_to(reference, judged, nearest_k, seed))
        row.update(confidence_stats(judged.probabilities))
        row["ode_rmse"] = None
        if cell.sampler not in STOCHASTIC:
            key = (cell.sampler, cell.spacing)
            if key not in answers:
                many = Cell(cell.sampler, reference_steps, cell.spacing)
                answers[key] = _decoded(diffusion, many, noise, batch_size, seed)[0]
            row["ode_rmse"] = float((images - answers[key]).pow(2).mean().sqrt())
        rows.append(row)
    return rows


def _decoded(
    diffusion, cell: Cell, noise: torch.Tensor, batch_size: int, seed: int
) -> tuple[torch.Tensor, int]:
    """``cell``'s images batch by batch, and its evaluations per batch (each batch makes as many)."""
    parts, evaluations = [], 0
    for index, batch in enumerate(noise.split(batch_size)):
        images, evaluations = decode(diffusion, cell, batch, seed + index)
        parts.append(images.cpu())
    return torch.cat(parts), evaluations


SAMPLER_COLUMNS = [
    "sampler",
    "spacing",
    "steps",
    "nfe",
    "seconds_per_sample",
    *DISTANCES,
    "mean_max_softmax",
    "confident_share",
    "ode_rmse",
]
