"""Interpolating between real digits: each found in noise space by DDIM inversion, the path between
the two noises decoded; and which held-out digits make the pairs."""

from __future__ import annotations

import dataclasses

import torch

from .decoding import Sampler, interpolation_grid, invert
from .diffusion import DiffusionProcess
from .errors import DiagnosticsError


def interpolate_real(
    diffusion: DiffusionProcess,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    steps: int = 9,
    sampler: Sampler | None = None,
    interpolation: str = "slerp",
    batch_size: int = 72,
    progress: bool = True,
) -> torch.Tensor:
    """Interpolate between real images: DDIM-invert each pair to noise over ``sampler``'s steps
    (η = 0 DDIM; 100 steps when None), interpolate the noises, decode with the same sampler.
    Images ``(n, steps + 2, C, H, W)``: each row starts and ends with the real digits, the decoded
    path between them.

    Clipping is off for both directions, whatever ``sampler.options`` say: only the unclipped DDIM
    map is inverted by DDIM inversion, so only then do the path's ends reproduce the real digits.
    """
    sampler = sampler or Sampler("ddim", 100)
    sampler = dataclasses.replace(sampler, options=dataclasses.replace(sampler.options, clip_x0=False))
    z0, z1 = invert(diffusion, sampler, torch.cat([x_a, x_b]), batch_size, progress).split(len(x_a))
    decoded = interpolation_grid(
        diffusion, z0, z1, steps, sampler, interpolation, batch_size, progress=progress
    )
    return torch.cat([x_a[:, None].float(), decoded, x_b[:, None].float()], dim=1)


def select_pairs(labels: torch.Tensor, pairs: list[list[int]], select: str) -> tuple[list[int], list[int]]:
    """Indices into the held-out split for each configured pair.

    ``select = "indices"``: the pairs are indices themselves. ``"classes"``: the pairs are digit
    classes; a class's k-th appearance among the pairs takes its k-th held-out image, so rows
    show different digits.
    """
    if select == "indices":
        for pair in pairs:
            for index in pair:
                if not 0 <= index < len(labels):
                    raise DiagnosticsError(
                        f"real-digit pair {pair}: index {index} is outside the held-out split "
                        f"(0..{len(labels) - 1})"
                    )
        return [a for a, _ in pairs], [b for _, b in pairs]
    if select != "classes":
        raise DiagnosticsError(f"pair selection '{select}' is unknown; use classes or indices")
    used = {}
    chosen = []
    for pair in pairs:
        for digit in pair:
            members = torch.nonzero(labels == digit).flatten()
            k = used.get(digit, 0)
            if k >= len(members):
                raise DiagnosticsError(
                    f"real-digit pair {pair}: the held-out split has only {len(members)} "
                    f"images of class {digit}"
                )
            used[digit] = k + 1
            chosen.append(int(members[k]))
    return chosen[0::2], chosen[1::2]
