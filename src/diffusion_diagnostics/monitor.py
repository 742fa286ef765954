"""The error per bucket of t from inside any training loop: a :class:`TimestepLossMonitor` is built
once from the model and a held-out batch, and every call measures the model as it is then, on the
same images with the same t and noise (common random numbers), so that two calls differ by the
model alone. It writes TensorBoard scalars when given a ``SummaryWriter`` (the optional
``tensorboard`` extra)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .analysis import TimestepLossTable, timestep_loss_table
from .diffusion import DiffusionProcess
from .process_config import ProcessConfig


class TimestepLossMonitor:
    """The loss analysis of one held-out batch, repeatable during training.

    ``diffusion``: the process around the network being trained (its weights are read at each
    call, never copied); ``images`` in the model's size and in [-1, 1]. Each call returns the
    :class:`~.analysis.TimestepLossTable` of :func:`~.analysis.timestep_loss_table`: ε-, x̂_0- and
    v-MSE per bucket and the bound, with t and noise drawn from ``seed`` alike every time.
    """

    def __init__(
        self,
        diffusion: DiffusionProcess,
        images: torch.Tensor,
        buckets: int = 10,
        seed: int = 0,
        batch_size: int = 250,
    ):
        self.diffusion = diffusion
        self.batches = list(images.split(batch_size))
        self.buckets, self.seed = buckets, seed

    @classmethod
    def for_diffusers(cls, unet: torch.nn.Module, scheduler, images: torch.Tensor, **settings):
        """For a diffusers ``UNet2DModel`` trained with a scheduler (its ``config`` holds the
        process in diffusers' keys)."""
        from .models import DiffusersUNet

        network = DiffusersUNet(unet)
        config = ProcessConfig.from_scheduler_config(dict(scheduler.config), type(scheduler).__name__)
        diffusion = DiffusionProcess(network, config=config, sample_shape=network.sample_shape)
        return cls(diffusion.to(unet.device), images, **settings)

    def __call__(self) -> TimestepLossTable:
        """The table for the network as it is now, measured in eval mode; every module is put
        back in the mode it was in (a wrapper's own flag need not be its network's)."""
        modes = {module: module.training for module in self.diffusion.model.modules()}
        self.diffusion.model.eval()
        try:
            return timestep_loss_table(
                self.diffusion, self.batches, len(self.batches), self.buckets, seed=self.seed
            )
        finally:
            for module, training in modes.items():
                module.training = training

    def log(self, writer, step: int, table: TimestepLossTable | None = None) -> TimestepLossTable:
        """Write each bucket's ε-MSE (``timestep_loss/eps_mse/t0000-0099`` …) and the bound
        (``timestep_loss/bound_bpd``) as scalars at ``step``; returns the table."""
        table = table if table is not None else self()
        for row in table.rows():
            writer.add_scalar(scalar_name(row), row["mse"], step)
        writer.add_scalar("timestep_loss/bound_bpd", table.bound.total_bpd, step)
        return table


def scalar_name(row: Mapping) -> str:
    """A bucket's TensorBoard tag, zero-padded so that the buckets sort by t."""
    return f"timestep_loss/eps_mse/t{int(row['t_start']):04d}-{int(row['t_end']):04d}"
