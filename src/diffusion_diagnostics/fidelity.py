"""How faithful fewer DDIM steps are: grids at several step counts against the finest one, and
held-out digits taken to noise by DDIM inversion and decoded back."""

from __future__ import annotations

import dataclasses
import time

import torch

from .decoding import Sampler, decode, interpolation_grid, invert
from .diffusion import DiffusionProcess
from .errors import DiagnosticsError


def _errors(images: torch.Tensor, reference: torch.Tensor) -> dict:
    """Per-pixel RMSE and largest absolute difference, images in [-1, 1] (a full swing is 2)."""
    difference = (images.double() - reference.double()).abs()
    return {"rmse": float(difference.pow(2).mean().sqrt()), "max_error": float(difference.max())}


def _at(sampler: Sampler, steps: int, clip: bool | None = None) -> Sampler:
    """``sampler`` at ``steps`` steps, x̂_0 clipped as ``clip`` says (None: as its options say)."""
    options = sampler.options if clip is None else dataclasses.replace(sampler.options, clip_x0=clip)
    return dataclasses.replace(sampler, steps=steps, options=options)


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
    sampler: Sampler | None = None,
    clipping: tuple[bool, ...] = (False, True),
) -> list[dict]:
    """Decode the same interpolation grid with ``sampler`` (η = 0 DDIM when None) at every step
    count, with x̂_0 clipped and not (``clipping``); one row per (count, clipping) with its wall
    time, its error against the grid of the largest count decoded the same way
    (``*_to_reference``: is the map the same at fewer steps?) and against the unclipped one
    (``*_to_unclipped``: the exact DDIM map, which fewer unclipped steps approach, DDIM section
    4.3)."""
    sampler = sampler or Sampler("ddim")
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
                _at(sampler, num_steps, clip),
                interpolation,
                batch_size,
                progress=progress,
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
    sampler: Sampler | None = None,
    clipping: tuple[bool, ...] = (False, True),
) -> list[dict]:
    """Real images -> DDIM inversion -> η = 0 DDIM decoding (``sampler``'s spacing and options,
    η = 0 DDIM when None), with the same S both ways; one row per (S, clipping of the decoding)
    with the reconstruction error. The inversion itself is never clipped (clipping is not
    invertible), so only the unclipped decoding can give the images back."""
    sampler = sampler or Sampler("ddim")
    rows = []
    for num_steps in _check_step_counts(step_counts):
        start = time.perf_counter()
        noise = invert(diffusion, _at(sampler, num_steps), images, batch_size, progress=False)
        inverted = time.perf_counter() - start
        for clip in clipping:
            start = time.perf_counter()
            decoded = decode(diffusion, _at(sampler, num_steps, clip), noise, batch_size, progress=progress)
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
