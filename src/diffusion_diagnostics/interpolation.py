"""What the noise space looks like: samples decoded from interpolated starting noise.

A grid has one row per endpoint pair (z0, z1) and ``steps`` columns; column j is decoded from the
noise at α = j / (steps - 1), so column 0 is z0 itself and the last column z1 itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.utils import save_image

from .checkpoint import read_tagged_file
from .diffusion import DiffusionProcess, SamplingOptions
from .errors import DiagnosticsError
from .files import atomic_output, save_torch
from .runtime import model_device

METHODS = ("lerp", "slerp")
SAMPLERS = ("ddpm", "ddim")
ENDPOINTS_FORMAT = "diffusion-diagnostics-endpoints"


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per row: keeps the norm that Gaussian noise concentrates at,
    which linear interpolation shrinks by up to √2 mid-way."""
    a, b = z0.flatten(1), z1.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]
    alpha = alpha[None, :, None]
    sin_theta = torch.sin(theta)[:, None]
    # Nearly parallel endpoints: the spherical weights are 0/0, and lerp is the limit.
    parallel = sin_theta.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(parallel, 1 - alpha, torch.sin((1 - alpha) * theta[:, None]) / safe)
    w1 = torch.where(parallel, alpha, torch.sin(alpha * theta[:, None]) / safe)
    return (w0 * a[:, None] + w1 * b[:, None]).reshape(len(z0), -1, *z0.shape[1:])


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, method: str = "lerp") -> torch.Tensor:
    """Noise for every cell of the grid, shape ``(n, steps, *z0.shape[1:])``."""
    if z0.shape != z1.shape:
        raise DiagnosticsError(f"endpoints differ in shape: z0 {tuple(z0.shape)}, z1 {tuple(z1.shape)}")
    if steps < 2:
        raise DiagnosticsError(f"an interpolation needs at least 2 steps (its two endpoints), got {steps}")
    alpha = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype, device=z0.device)
    if method == "lerp":
        view = alpha.reshape(1, steps, *([1] * (z0.ndim - 1)))
        grid = (1 - view) * z0[:, None] + view * z1[:, None]  # z = (1 - α) z0 + α z1
    elif method == "slerp":
        grid = slerp(z0, z1, alpha)
    else:
        raise DiagnosticsError(f"interpolation '{method}' is unknown; use one of {', '.join(METHODS)}")
    grid[:, 0], grid[:, -1] = z0, z1  # the endpoints exactly, whatever rounding did
    return grid


def sample_in_batches(
    sampler: Callable[[torch.Tensor, str], torch.Tensor],
    latents: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Decode ``latents`` batch by batch; only one batch is on the device at a time."""
    if batch_size < 1:
        raise DiagnosticsError(f"batch_size must be at least 1, got {batch_size}")
    batches = latents.split(batch_size)
    outputs = []
    for index, batch in enumerate(batches):
        outputs.append(sampler(batch.to(device), f"batch {index + 1}/{len(batches)}").cpu())
    return torch.cat(outputs)


def interpolation_grid(
    diffusion: DiffusionProcess,
    z0: torch.Tensor,
    z1: torch.Tensor,
    steps: int = 7,
    sampler: str = "ddpm",
    ddim_steps: int = 50,
    eta: float = 0.0,
    interpolation: str = "lerp",
    batch_size: int = 72,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    shared_noise: bool = False,
    options: SamplingOptions | None = None,
) -> torch.Tensor:
    """Decode the interpolated noise between given endpoints; images ``(n * steps, C, H, W)``
    in [-1, 1], row-major (row i is the pair z0[i], z1[i]).

    DDPM draws its per-step noise from ``generator`` (on the sampling device); DDIM with η = 0
    uses none. ``shared_noise`` (DDPM): every image of a row gets the same per-step noise, so a
    row changes only with its starting noise (common random numbers). ``options``: clipping,
    precision, CUDA graphs and DDIM's spacing (the model's defaults when None).
    """
    device = torch.device(device) if device is not None else model_device(diffusion)
    latents = interpolate(z0.float(), z1.float(), steps, interpolation).flatten(0, 1)
    if sampler == "ddpm":
        group = steps if shared_noise else 1
        if shared_noise and batch_size >= 1:
            # A row's images must share a batch to share its noise: whole rows per batch.
            batch_size = max(steps, batch_size - batch_size % steps)

        def decode(batch, desc):
            return diffusion.sample(
                batch,
                generator=generator,
                progress=progress,
                desc=f"DDPM {desc}",
                shared_noise=group,
                options=options,
            )
    elif sampler == "ddim":

        def decode(batch, desc):
            return diffusion.sample_ddim(
                batch,
                ddim_steps,
                eta,
                generator=generator,
                progress=progress,
                desc=f"DDIM {desc}",
                options=options,
            )
    else:
        raise DiagnosticsError(f"sampler '{sampler}' is unknown; use one of {', '.join(SAMPLERS)}")
    return sample_in_batches(decode, latents, batch_size, device)


def interpolate_real(
    diffusion: DiffusionProcess,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    steps: int = 9,
    num_steps: int = 100,
    interpolation: str = "slerp",
    batch_size: int = 72,
    progress: bool = True,
    options: SamplingOptions | None = None,
) -> torch.Tensor:
    """Interpolate between real images: DDIM-invert each pair to noise, interpolate the noises,
    decode with η = 0 DDIM. Images ``(n * (steps + 2), C, H, W)``: each row starts and ends with
    the real digits, the decoded path between them.

    Clipping is off for both directions, whatever ``options`` say: only the unclipped DDIM map is
    inverted by DDIM inversion, so only then do the path's ends reproduce the real digits.
    """
    device = model_device(diffusion)
    options = dataclasses.replace(options or SamplingOptions(), clip_x0=False)

    def invert(batch, desc):
        return diffusion.ddim_invert(batch, num_steps, progress=progress, options=options)

    z = sample_in_batches(invert, torch.cat([x_a, x_b]).float(), batch_size, device)
    z0, z1 = z.split(len(x_a))
    decoded = interpolation_grid(
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
    rows = decoded.reshape(len(x_a), steps, *x_a.shape[1:])
    return torch.cat([x_a[:, None].float(), rows, x_b[:, None].float()], dim=1).flatten(0, 1)


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


def save_grid(images: torch.Tensor, columns: int, path: str | os.PathLike) -> str:
    """Save images in [-1, 1] as one PNG, ``columns`` tiles per row; returns the path."""
    with atomic_output(path) as temporary:
        save_image(images.clamp(-1, 1) * 0.5 + 0.5, temporary, nrow=columns)
    return str(path)


GRID_FORMAT = "diffusion-diagnostics-grid"


def save_grid_images(path: str | os.PathLike, images: torch.Tensor) -> None:
    """A decoded grid, shape ``(rows, columns, C, H, W)`` in [-1, 1]."""
    save_torch({"format": GRID_FORMAT, "images": images}, path)


def load_grid_images(path: str | os.PathLike) -> torch.Tensor:
    return _load_tagged(path, GRID_FORMAT, "interpolation_samples")["images"]


def _load_tagged(path: str | os.PathLike, tag: str, rule: str) -> dict:
    """A file of the workflow's own, with one-line errors that name the rule that rewrites it."""
    expected = f"expected the {rule} rule's output"
    return read_tagged_file(
        Path(path), tag, None, expected, what=f"{rule} output", remedy=f"rerun the {rule} rule"
    )


# --- endpoints -----------------------------------------------------------------------------


def draw_endpoints(n: int, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs of standard-normal endpoints from a CPU generator (the same on every machine)."""
    generator = torch.Generator().manual_seed(seed)
    z0 = torch.randn((n, *shape), generator=generator)
    z1 = torch.randn((n, *shape), generator=generator)
    return z0, z1


def save_endpoints(path: str | os.PathLike, z0: torch.Tensor, z1: torch.Tensor, seed: int) -> None:
    save_torch({"format": ENDPOINTS_FORMAT, "z0": z0, "z1": z1, "seed": seed}, path)


def load_endpoints(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    payload = _load_tagged(path, ENDPOINTS_FORMAT, "noise_endpoints")
    return payload["z0"], payload["z1"]


# --- the original utility's interface ------------------------------------------------------


def _on_model_device(diffusion, device, x: torch.Tensor) -> tuple[torch.device, torch.Tensor]:
    device = torch.device(device) if device is not None else model_device(diffusion)
    return device, x.to(device)


def sample_from_xt(diffusion, x_t, device=None, generator=None):
    """Full stochastic DDPM sampling from given noise x_T; returns x_0 in [-1, 1]."""
    _, x_t = _on_model_device(diffusion, device, x_t)
    return diffusion.sample(x_t, generator=generator)


def ddim_sample_from_xt(diffusion, x_t, ddim_steps=1000, eta=0.0, device=None, generator=None):
    """DDIM sampling from given noise x_T with ``ddim_steps`` steps; deterministic when η = 0. By
    default all 1000 steps of the original's schedule, as the original ran."""
    _, x_t = _on_model_device(diffusion, device, x_t)
    return diffusion.sample_ddim(x_t, ddim_steps, eta, generator=generator)


def _random_endpoints(diffusion, n, generator):
    shape = (n, *diffusion.sample_shape)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def interpolate_noise_and_generate(
    diffusion,
    n=8,
    steps=7,
    save_path="interp.png",
    device=None,
    *,
    interpolation="lerp",
    batch_size=72,
    generator=None,
):
    """n random noise pairs, each interpolated in ``steps`` columns and decoded with DDPM;
    saves the grid and returns ``save_path``. ``generator`` (CPU) seeds the endpoints."""
    z0, z1 = _random_endpoints(diffusion, n, generator)
    images = interpolation_grid(
        diffusion, z0, z1, steps, "ddpm", interpolation=interpolation, batch_size=batch_size, device=device
    )
    return save_grid(images, steps, save_path)


def interpolate_noise_and_generate_ddim(
    diffusion,
    n=8,
    steps=7,
    ddim_steps=1000,
    eta=0.0,
    save_path="interp.png",
    device=None,
    *,
    interpolation="lerp",
    batch_size=72,
    generator=None,
):
    """As :func:`interpolate_noise_and_generate`, decoded with DDIM (deterministic when η = 0)."""
    z0, z1 = _random_endpoints(diffusion, n, generator)
    images = interpolation_grid(
        diffusion, z0, z1, steps, "ddim", ddim_steps, eta, interpolation, batch_size, device=device
    )
    return save_grid(images, steps, save_path)
