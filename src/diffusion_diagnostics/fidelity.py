"""How faithful fewer DDIM steps are: grids at several step counts against the finest one, and
held-out digits taken to noise by DDIM inversion and decoded back."""

from __future__ import annotations

import dataclasses
import time

import torch

from .decoding import interpolation_grid, sample_in_batches
from .diffusion import DiffusionProcess, SamplingOptions
from .errors import DiagnosticsError
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
    clipping: tuple[bool, ...] = (False, True),
) -> list[dict]:
    """Decode the same interpolation grid with η = 0 DDIM at every step count, with x̂_0 clipped
    and not (``clipping``); one row per (count, clipping) with its wall time, its error against
    the grid of the largest count decoded the same way (``*_to_reference``: is the map the same
    at fewer steps?) and against the unclipped one (``*_to_unclipped``: the exact DDIM map, which
    fewer unclipped steps approach, DDIM section 4.3)."""
    options = options or SamplingOptions()
    grids, seconds = {}, {}
    for clip in clipping:
        for num_steps in _check_step_counts(step_counts):
            start = time.perf_counter()
            # .cpu() inside the batching syncs the device, so the time is the sampling's own.
            grids[num_steps, clip] = interpolation_grid(
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
                options=dataclasses.replace(options, clip_x0=clip),
            )
            seconds[num_steps, clip] = time.perf_counter() - start
    reference_steps = max(step_counts)
    unclipped = grids.get((reference_steps, False))
    rows = []
    for (num_steps, clip), grid in grids.items():
        row = {"num_steps": num_steps, "clip_x0": clip, "reference_steps": reference_steps}
        row.update({f"{k}_to_reference": v for k, v in _errors(grid, grids[reference_steps, clip]).items()})
        if unclipped is not None:
            row.update({f"{k}_to_unclipped": v for k, v in _errors(grid, unclipped).items()})
        rows.append({**row, "seconds": seconds[num_steps, clip]})
    return rows


def inversion_reconstruction(
    diffusion: DiffusionProcess,
    images: torch.Tensor,
    step_counts: list[int],
    batch_size: int = 72,
    progress: bool = True,
    options: SamplingOptions | None = None,
    clipping: tuple[bool, ...] = (False, True),
) -> list[dict]:
    """Real images -> DDIM inversion -> η = 0 DDIM decoding, with the same S both ways; one row
    per (S, clipping of the decoding) with the reconstruction error. The inversion itself is never
    clipped (clipping is not invertible), so only the unclipped decoding can give the images back."""
    device = model_device(diffusion)
    options = options or SamplingOptions()
    rows = []
    for num_steps in _check_step_counts(step_counts):
        start = time.perf_counter()

        def invert(batch, desc, num_steps=num_steps):
            return diffusion.ddim_invert(batch, num_steps, options=options)

        noise = sample_in_batches(invert, images.float(), batch_size, device)
        inverted = time.perf_counter() - start
        for clip in clipping:
            start = time.perf_counter()
            decoding = dataclasses.replace(options, clip_x0=clip)

            def decode(batch, desc, num_steps=num_steps, decoding=decoding):
                return diffusion.sample_ddim(
                    batch, num_steps, progress=progress, desc=f"DDIM {num_steps} {desc}", options=decoding
                )

            decoded = sample_in_batches(decode, noise, batch_size, device)
            rows.append(
                {
                    "num_steps": num_steps,
                    "clip_x0": clip,
                    "images": len(images),
                    **_errors(decoded, images),
                    "seconds": inverted + time.perf_counter() - start,
                }
            )
    return rows
