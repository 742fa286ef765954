"""How faithful fewer DDIM steps are: grids at several step counts against the finest one, and
held-out digits taken to noise by DDIM inversion and decoded back."""

from __future__ import annotations

import dataclasses
import time

import torch

from .diffusion import DiffusionProcess, SamplingOptions
from .errors import DiagnosticsError
from .interpolation import interpolation_grid, sample_in_batches
from .runtime import model_device


def _errors(images: torch.Tensor, reference: torch.Tensor) -> dict:
    """Per-pixel RMSE and largest absolute difference, images in [-1, 1] (a full swing is 2)."""
    difference = (images.double() - reference.double()).abs()
    return {"rmse": float(difference.pow(2).mean().sqrt()), "max_error": float(difference.max())}


def _check_step_counts(step_counts: list[int]) -> list[int]:
    if not step_counts:
        raise DiagnosticsError("no DDIM step counts given; list at least one")
    return sorted(set(step_counts))


def ddim_step_sweep(
    diffusion: DiffusionProcess,
    z0: torch.Tensor,
    z1: torch.Tensor,
    steps: int,
    step_counts: list[int],
    interpolation: str = "lerp",
    batch_size: int = 72,
    progress: bool = True,
    options: SamplingOptions | None = None,
) -> list[dict]:
    """Decode the same interpolation grid with η = 0 DDIM at every step count; one row per count
    with its wall time and its error against the grid of the largest count (the reference)."""
    grids, seconds = {}, {}
    for num_steps in _check_step_counts(step_counts):
        start = time.perf_counter()
        # .cpu() inside the batching syncs the device, so the time is the sampling's own.
        grids[num_steps] = interpolation_grid(
            diffusion,
            z0,
            z1,
            steps,
            "ddim",
            num_steps,
            0.0,
            interpolation,
            batch_size,
            progress=progress,
            options=options,
        )
        seconds[num_steps] = time.perf_counter() - start
    reference_steps = max(grids)
    return [
        {
            "num_steps": num_steps,
            "reference_steps": reference_steps,
            **{f"{k}_to_reference": v for k, v in _errors(grid, grids[reference_steps]).items()},
            "seconds": seconds[num_steps],
        }
        for num_steps, grid in grids.items()
    ]


def inversion_reconstruction(
    diffusion: DiffusionProcess,
    images: torch.Tensor,
    step_counts: list[int],
    batch_size: int = 72,
    progress: bool = True,
    options: SamplingOptions | None = None,
) -> list[dict]:
    """Real images -> DDIM inversion -> η = 0 DDIM decoding, with the same S both ways; one row
    per S with the reconstruction error. Clipping is off whatever ``options`` say: inversion
    inverts the unclipped map."""
    device = model_device(diffusion)
    options = dataclasses.replace(options or SamplingOptions(), clip_x0=False)
    rows = []
    for num_steps in _check_step_counts(step_counts):
        start = time.perf_counter()

        def round_trip(batch, desc, num_steps=num_steps):
            noise = diffusion.ddim_invert(batch, num_steps, options=options)
            return diffusion.sample_ddim(
                noise, num_steps, progress=progress, desc=f"DDIM {num_steps} {desc}", options=options
            )

        decoded = sample_in_batches(round_trip, images.float(), batch_size, device)
        rows.append(
            {
                "num_steps": num_steps,
                "images": len(images),
                **_errors(decoded, images),
                "seconds": time.perf_counter() - start,
            }
        )
    return rows
