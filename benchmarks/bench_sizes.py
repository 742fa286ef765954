"""The sizes a benchmark run measures at: the workflow's own (config/config.yaml), or tiny ones."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from diffusion_diagnostics.unet import UNet

REPO = Path(__file__).resolve().parents[1]
# Our UNet's constructor arguments that decide its layout (and the diffusers reference's).
LAYOUT_KEYS = ("base_channels", "channel_mults", "num_res_blocks")


@dataclass(frozen=True)
class Sizes:
    model: dict  # our UNet's constructor arguments
    diffusion: dict  # timesteps, beta_start, beta_end
    rows: int  # the grid: rows × columns images, decoded as one batch
    columns: int
    ddim_steps: tuple[int, ...]  # descending; the first is T, the reference of the accuracy rows
    workflow_ddim_steps: int
    loss_batch: int
    loss_batches: int
    loss_buckets: int
    # One checkpoint of a trajectory: digits measured, at once, starting noises decoded, DDIM steps.
    trajectory_images: int
    trajectory_batch: int
    trajectory_samples: int
    trajectory_ddim_steps: int
    train_batch: int
    # train() is timed at two lengths; the difference is the steady-state cost of its loop.
    train_steps: tuple[int, int]
    train_val_size: int
    # The practical peak: a large 3 × 3 convolution (batch, channels in = out, image size).
    conv: tuple[int, int, int]
    conv_calls: int
    # Paired short runs: a sampler of this many steps against the same forwards alone, this many times.
    paired_steps: int
    pairs: int

    @property
    def timesteps(self) -> int:
        return self.diffusion["timesteps"]

    @property
    def diffusers_blocks(self) -> tuple[int, ...]:
        """block_out_channels of the diffusers UNet laid out like ours: one block per level."""
        return tuple(self.model["base_channels"] * mult for mult in self.model["channel_mults"])

    @property
    def images(self) -> int:
        return self.rows * self.columns


def full_sizes() -> Sizes:
    """The workflow's defaults, read from config/config.yaml so that the benchmark follows them."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    grid, loss, training = config["interpolation"], config["timestep_loss"], config["train"]
    trajectory = config["trajectory"]
    timesteps = config["diffusion"]["timesteps"]
    return Sizes(
        model={key: config["model"][key] for key in LAYOUT_KEYS},
        diffusion={key: config["diffusion"][key] for key in ("timesteps", "beta_start", "beta_end")},
        rows=grid["n"],
        columns=grid["steps"],
        ddim_steps=tuple(sorted({timesteps, 250, 100, grid["ddim"]["num_steps"]}, reverse=True)),
        workflow_ddim_steps=grid["ddim"]["num_steps"],
        loss_batch=loss["batch_size"],
        loss_batches=loss["num_batches"],
        loss_buckets=loss["buckets"],
        trajectory_images=trajectory["images"],
        trajectory_batch=trajectory["batch_size"],
        trajectory_samples=trajectory["samples"],
        trajectory_ddim_steps=trajectory["ddim_steps"],
        train_batch=training["batch_size"],
        train_steps=(10, 60),
        train_val_size=training["val_size"],
        conv=(64, 256, 28),
        conv_calls=3,
        paired_steps=10,
        pairs=30,
    )


def quick_sizes() -> Sizes:
    return Sizes(
        model={"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1},
        diffusion={"timesteps": 10, "beta_start": 1e-3, "beta_end": 0.2},
        rows=2,
        columns=3,
        ddim_steps=(10, 5, 2),
        workflow_ddim_steps=2,
        loss_batch=16,
        loss_batches=2,
        loss_buckets=2,
        trajectory_images=16,
        trajectory_batch=8,
        trajectory_samples=2,
        trajectory_ddim_steps=2,
        train_batch=8,
        train_steps=(2, 4),
        train_val_size=16,
        conv=(2, 32, 14),
        conv_calls=1,
        paired_steps=3,
        pairs=3,
    )


def with_network_of(sizes: Sizes, network) -> Sizes:
    """The sizes with the network of a checkpoint that is this package's UNet, which may be laid
    out otherwise than the config's defaults: training and the diffusers reference follow it."""
    if not isinstance(network, UNet):
        return sizes
    return replace(sizes, model={key: network.config[key] for key in LAYOUT_KEYS})
