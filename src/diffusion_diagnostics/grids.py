"""Grid files: the PNG of a decoded grid, the decoded images the PNG and the metrics both read,
and the seeded noise endpoints a grid starts from."""

from __future__ import annotations

import os

import torch

from .errors import DiagnosticsError
from .files import atomic_output, read_tagged_file, save_torch

GRID_FORMAT = "diffusion-diagnostics-grid"
ENDPOINTS_FORMAT = "diffusion-diagnostics-endpoints"


def save_grid(grid: torch.Tensor, path: str | os.PathLike) -> str:
    """Save a grid ``(rows, columns, C, H, W)`` of images in [-1, 1] as one PNG of tiles; returns
    the path."""
    # Imported here: torchvision costs every job that imports it a second or two of start-up, and
    # most rules that read or write grid files never draw one.
    from torchvision.utils import save_image

    if grid.ndim != 5:
        raise DiagnosticsError(f"a grid has shape (rows, columns, C, H, W); got {tuple(grid.shape)}")
    with atomic_output(path) as temporary:
        save_image(grid.flatten(0, 1).clamp(-1, 1) * 0.5 + 0.5, temporary, nrow=grid.shape[1])
    return str(path)


def tile_rows(images: torch.Tensor, columns: int, max_rows: int) -> torch.Tensor:
    """The first ``columns * max_rows`` of a batch ``(N, C, H, W)`` as a grid ``(rows, columns, C,
    H, W)``; a last row left short is filled with background (-1), so no image is dropped."""
    images = images[: columns * max_rows]
    rows = -(-len(images) // columns)
    blank = images.new_full((rows * columns - len(images), *images.shape[1:]), -1.0)
    return torch.cat([images, blank]).reshape(rows, columns, *images.shape[1:])


def save_grid_images(path: str | os.PathLike, images: torch.Tensor) -> None:
    """A decoded grid, shape ``(rows, columns, C, H, W)`` in [-1, 1]."""
    save_torch({"format": GRID_FORMAT, "images": images}, path)


def load_grid_images(path: str | os.PathLike) -> torch.Tensor:
    return _load_tagged(path, GRID_FORMAT, "interpolation_samples")["images"]


def _load_tagged(path: str | os.PathLike, tag: str, rule: str) -> dict:
    """A file of the workflow's own, with one-line errors that name the rule that rewrites it."""
    expected = f"expected the {rule} rule's output"
    return read_tagged_file(path, tag, None, expected, what=f"{rule} output", remedy=f"rerun the {rule} rule")


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
