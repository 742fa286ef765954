"""Benchmark cases for the richer loss analysis (analysis.timestep_loss_table), for benchmark.py.

``loss_table_cases`` returns the analysis and its forward-pass floor as zero-argument callables,
in the shape of benchmark.py's ``loss_cases``, to be timed by its ``round_robin``. The floor is the
network alone on ready batches: the analysis's two passes per image (one at the drawn t, one at
t = 0 for the decoder term), at the same batch size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from diffusion_diagnostics import DiffusionProcess
from diffusion_diagnostics.analysis import timestep_loss_table


def eight_bit_images(count: int, generator: torch.Generator) -> torch.Tensor:
    """Random images on the 8-bit grid in [-1, 1], the only pixels the bound scores."""
    return torch.randint(0, 256, (count, 1, 28, 28), generator=generator) / 127.5 - 1


def loss_table_cases(
    diffusion: DiffusionProcess, batch: int, batches: int, buckets: int
) -> dict[str, Callable]:
    generator = torch.Generator().manual_seed(0)
    images = eight_bit_images(batch * batches, generator)
    # The same kind of loader as the workflow's: a DataLoader over a TensorDataset.
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=batch)
    x_t = images[:batch].to(diffusion.device)
    timesteps = torch.randint(0, diffusion.timesteps, (batch,), generator=generator).to(diffusion.device)

    def analysis():
        return timestep_loss_table(diffusion, loader, batches, buckets)

    def floor():
        with torch.inference_mode():
            for _ in range(2 * batches):
                diffusion.model(x_t, timesteps)

    return {"loss_table": analysis, "loss_table_floor": floor}
