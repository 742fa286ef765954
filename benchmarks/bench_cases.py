"""The work the benchmark times around our network, each with the floor it is read against.

A floor is the same work with everything but the network taken away: the same number of forward
passes at the same batch under ``torch.inference_mode`` (sampling, the loss analyses), or the same
number of forward + backward + optimizer steps on a ready batch (training).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_sizes import REPO, Sizes, full_sizes
from bench_timing import Case, Timings, flops_of, paired_ratios, usable_cores
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diffusion_diagnostics import DiffusionProcess, UNet, per_timestep_loss
from diffusion_diagnostics.analysis import timestep_loss_table
from diffusion_diagnostics.decoding import Sampler, interpolation_grid
from diffusion_diagnostics.diffusion import SamplingOptions, trailing_timesteps
from diffusion_diagnostics.graphs import can_capture
from diffusion_diagnostics.grids import draw_endpoints
from diffusion_diagnostics.interpolation import interpolate
from diffusion_diagnostics.models import load_model
from diffusion_diagnostics.runtime import keep_freed_memory, resolve_device
from diffusion_diagnostics.training import TrainConfig, train
from diffusion_diagnostics.trajectory import Checkpoint, follow

# timestep_loss_table's passes per batch: one at the drawn t, one at t = 0 for the decoder term L_0.
TABLE_PASSES_PER_BATCH = 2


def pixel_difference(images: torch.Tensor, reference: torch.Tensor) -> dict:
    difference = (images - reference).double()
    return {"rmse": difference.pow(2).mean().sqrt().item(), "max_abs": difference.abs().max().item()}


# --- the network ---------------------------------------------------------------------------------


def one_row_parser(description: str, reps: int) -> argparse.ArgumentParser:
    """The arguments of a script that times one row of the benchmark alone, on a trained model."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reps", type=int, default=reps, help="interleaved repetitions (median reported)")
    parser.add_argument(
        "--checkpoint", type=Path, default=REPO / "best_model.pt", help="anything load_model reads"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    return parser


def one_row_model(args: argparse.Namespace) -> tuple[DiffusionProcess, str, torch.device]:
    """Threads and memory as the workflow's scripts set them, and the model on its device."""
    torch.set_num_threads(usable_cores())
    keep_freed_memory()
    device = resolve_device(args.device)
    diffusion, weights = our_diffusion(full_sizes(), args.checkpoint, device)
    return diffusion, weights, device


def our_diffusion(
    sizes: Sizes, checkpoint: Path | None, device: torch.device
) -> tuple[DiffusionProcess, str]:
    """The model whose samplers are timed, and a line saying which weights it has."""
    if checkpoint is not None:
        diffusion, info = load_model(checkpoint, device)
        return diffusion, info["description"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = UNet(**sizes.model)
        # The output layer starts at zero (the zero predictor); random weights there instead,
        # so that the accuracy rows compare samplers of a network that does something.
        nn.init.normal_(model.conv_out.weight, std=0.02)
    diffusion = DiffusionProcess(model, **sizes.diffusion).to(device).eval()
    return diffusion, "random (no trained checkpoint found; pixel errors are those of an untrained network)"


def forward_floor(forward: Callable, x: torch.Tensor, timesteps: list[int]) -> Callable:
    """The network alone: one forward per timestep, the same batch, no sampler arithmetic."""
    batch = [torch.full((len(x),), t, dtype=torch.long, device=x.device) for t in timesteps]

    def run():
        with torch.inference_mode():
            for t in batch:
                forward(x, t)

    return run


def paired_overhead(
    network: nn.Module, x: torch.Tensor, sizes: Sizes, forward: Callable | None = None
) -> dict:
    """Our DDPM and DDIM samplers around ``network`` over its forwards alone (``forward``, the
    network's own call; ``network`` itself by default), in paired short runs.

    The whole-grid rows compare runs minutes apart, and this machine's speed drifts by more over
    minutes than the few per cent the loop may cost. The short sampler is the same code with a
    ``paired_steps``-step schedule, so its per-run set-up counts ``T / paired_steps`` times more
    than in a grid.
    """
    steps = sizes.paired_steps
    schedule = {key: sizes.diffusion[key] for key in ("beta_start", "beta_end")}
    short = DiffusionProcess(network, steps, **schedule).to(x.device)
    runs = {
        "ddpm": lambda: short.sample(x, generator=torch.Generator(x.device).manual_seed(1)),
        "ddim": lambda: short.sample_ddim(x, steps),
    }
    floor = forward_floor(forward or network, x, list(range(steps - 1, -1, -1)))
    ratios = paired_ratios(runs, floor, sizes.pairs, x.device)
    return {
        name: {
            "steps": steps,
            "pairs": len(values),
            "median_ratio": statistics.median(values),
            "ratios": values,
        }
        for name, values in ratios.items()
    }


# --- the grids -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """One sampler over the grid's latents, with the sampling options the workflow can choose."""

    kind: str  # "ddpm" or "ddim"
    forwards: int  # T for DDPM, S for DDIM
    precision: str = "float32"
    cuda_graphs: bool = False

    @property
    def name(self) -> str:
        base = "ddpm" if self.kind == "ddpm" else f"ddim_{self.forwards}"
        return (
            base + ("_bf16" if self.precision == "bfloat16" else "") + ("_graph" if self.cuda_graphs else "")
        )

    @property
    def label(self) -> str:
        return "DDPM grid" if self.kind == "ddpm" else f"DDIM grid, S = {self.forwards}"

    @property
    def eager(self) -> Grid:
        return replace(self, cuda_graphs=False)

    @property
    def float32(self) -> Grid:
        return replace(self, precision="float32")

    def sampler(self) -> Sampler:
        return Sampler(
            self.kind,
            self.forwards,
            options=SamplingOptions(precision=self.precision, cuda_graphs=self.cuda_graphs),
        )


def grids_to_time(sizes: Sizes, device: torch.device) -> list[Grid]:
    """float32 DDPM and DDIM at every S; DDPM and the workflow's DDIM also in bf16 and, where the
    device can capture, as CUDA graphs in both precisions."""
    float32 = [Grid("ddpm", sizes.timesteps), *(Grid("ddim", steps) for steps in sizes.ddim_steps)]
    workflow = [Grid("ddpm", sizes.timesteps), Grid("ddim", sizes.workflow_ddim_steps)]
    bfloat16 = [replace(grid, precision="bfloat16") for grid in workflow]
    graphs = [replace(grid, cuda_graphs=True) for grid in workflow + bfloat16] if can_capture(device) else []
    return float32 + bfloat16 + graphs


@dataclass
class Samplers:
    """Our grids on the workflow's endpoints, and the forward floors they are read against."""

    floors: dict[int, Case]  # by number of forwards
    grids: dict[Grid, Case]
    flops_per_forward: int
    x_T: torch.Tensor  # the grid's latents, as one batch

    def cases(self) -> list[Case]:
        return [*self.floors.values(), *self.grids.values()]

    def eager_float32(self) -> list[Grid]:
        return [grid for grid in self.grids if grid == grid.eager.float32]

    def floor_table(self, timings: Timings) -> dict:
        return {
            case.name: {"seconds": timings.median(case), "all_seconds": timings.all(case)}
            for case in self.floors.values()
        }

    def sampler_table(self, timings: Timings) -> dict:
        rows = {}
        for grid in self.eager_float32():
            seconds, floor = timings.median(self.grids[grid]), timings.median(self.floors[grid.forwards])
            rows[grid.name] = {
                "label": grid.label,
                "forwards": grid.forwards,
                "seconds": seconds,
                "floor_seconds": floor,
                "ratio_to_floor": seconds / floor,
                "network_gflops_while_sampling": self.flops_per_forward * grid.forwards / seconds / 1e9,
                "all_seconds": timings.all(self.grids[grid]),
            }
        return rows

    def accuracy_table(self, timings: Timings) -> dict:
        """Each DDIM grid against the one with the most steps, from the same endpoints."""
        ddim = [grid for grid in self.eager_float32() if grid.kind == "ddim"]
        reference = max(ddim, key=lambda grid: grid.forwards)
        return {
            str(grid.forwards): {
                **pixel_difference(timings.output(self.grids[grid]), timings.output(self.grids[reference])),
                "speedup_vs_reference": timings.median(self.grids[reference])
                / timings.median(self.grids[grid]),
            }
            for grid in ddim
            if grid != reference
        }

    def bfloat16_table(self, timings: Timings) -> dict:
        rows = {}
        for grid in self.grids:
            if grid.precision == "bfloat16" and not grid.cuda_graphs:
                case, float32 = self.grids[grid], self.grids[grid.float32]
                difference = pixel_difference(timings.output(case), timings.output(float32))
                rows[grid.float32.name] = {
                    "label": grid.label,
                    "forwards": grid.forwards,
                    "seconds": timings.median(case),
                    "float32_seconds": timings.median(float32),
                    "speedup": timings.median(float32) / timings.median(case),
                    "rmse_to_float32": difference["rmse"],
                    "max_abs_to_float32": difference["max_abs"],
                    "all_seconds": timings.all(case),
                }
        return rows

    def cuda_graph_table(self, timings: Timings) -> dict:
        """Only where the device can capture: each graph run against the same grid run eagerly."""
        rows = {}
        for grid in self.grids:
            if grid.cuda_graphs:
                case, eager = self.grids[grid], self.grids[grid.eager]
                difference = pixel_difference(timings.output(case), timings.output(eager))
                rows[grid.name] = {
                    "label": grid.label,
                    "forwards": grid.forwards,
                    "precision": grid.precision,
                    "seconds": timings.median(case),
                    "eager_seconds": timings.median(eager),
                    "speedup": timings.median(eager) / timings.median(case),
                    "speedup_vs_float32_eager": timings.median(self.grids[grid.eager.float32])
                    / timings.median(case),
                    "rmse_to_eager": difference["rmse"],
                    "max_abs_to_eager": difference["max_abs"],
                    "all_seconds": timings.all(case),
                }
        return rows


def grid_latents(sizes: Sizes, diffusion: DiffusionProcess) -> tuple[torch.Tensor, torch.Tensor]:
    """The workflow's endpoints (seed 0); the grid decodes their interpolation, row by row."""
    return draw_endpoints(sizes.rows, diffusion.sample_shape, seed=0)


def sampler_cases(diffusion: DiffusionProcess, sizes: Sizes, device: torch.device) -> Samplers:
    z0, z1 = grid_latents(sizes, diffusion)
    x_T = interpolate(z0, z1, sizes.columns).flatten(0, 1).to(device)
    network = diffusion.model

    def grid_run(grid: Grid) -> Callable:
        def run():
            return interpolation_grid(
                diffusion,
                z0,
                z1,
                sizes.columns,
                grid.sampler(),
                batch_size=sizes.images,
                generator=torch.Generator(device).manual_seed(1),
                progress=False,
            )

        return run

    floors = {
        forwards: Case(
            f"floor_{forwards}",
            forward_floor(network, x_T, trailing_timesteps(sizes.timesteps, forwards)),
            warm_up=forwards == min(sizes.ddim_steps),
        )
        for forwards in sorted({sizes.timesteps, *sizes.ddim_steps}, reverse=True)
    }
    grids = {grid: Case(grid.name, grid_run(grid)) for grid in grids_to_time(sizes, device)}
    zeros = torch.zeros(len(x_T), dtype=torch.long, device=device)
    return Samplers(floors, grids, flops_of(lambda: network(x_T, zeros)), x_T)


# --- the loss analyses ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LossAnalysis:
    """A loss analysis and its floor: the forward passes it makes, alone, on a ready batch."""

    function: str  # the library function timed
    images: int
    forwards: int
    case: Case
    floor: Case

    def summary(self, timings: Timings) -> dict:
        seconds, floor = timings.median(self.case), timings.median(self.floor)
        return {
            "images": self.images,
            "forwards": self.forwards,
            "seconds": seconds,
            "floor_seconds": floor,
            "images_per_second": self.images / seconds,
            "floor_images_per_second": self.images / floor,
            "ratio_to_floor": seconds / floor,
        }


def eight_bit_images(count: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random images on the 8-bit grid in [-1, 1], the pixels the likelihood bound is defined for."""
    return torch.randint(0, 256, (count, *shape), generator=generator) / 127.5 - 1


def loss_analyses(diffusion: DiffusionProcess, sizes: Sizes, device: torch.device) -> list[LossAnalysis]:
    batch, batches = sizes.loss_batch, sizes.loss_batches
    generator = torch.Generator().manual_seed(0)
    images = eight_bit_images(batch * batches, diffusion.sample_shape, generator)
    # The same kind of loader as the workflow's held-out loader: a DataLoader over a TensorDataset.
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=batch)
    x_t = images[:batch].to(device)
    t = torch.randint(0, diffusion.timesteps, (batch,), generator=generator).to(device)

    def repeated_forward(passes: int) -> Callable:
        def run():
            with torch.inference_mode():
                for _ in range(passes):
                    diffusion.model(x_t, t)

        return run

    table_passes = TABLE_PASSES_PER_BATCH * batches
    return [
        LossAnalysis(
            "per_timestep_loss",
            len(images),
            batches,
            Case("loss", lambda: per_timestep_loss(diffusion, loader, batches, sizes.loss_buckets)),
            Case("loss_floor", repeated_forward(batches), warm_up=True),
        ),
        LossAnalysis(
            "timestep_loss_table",
            len(images),
            table_passes,
            Case("loss_table", lambda: timestep_loss_table(diffusion, loader, batches, sizes.loss_buckets)),
            Case("loss_table_floor", repeated_forward(table_passes)),
        ),
        trajectory_analysis(diffusion, sizes, device),
    ]


def trajectory_analysis(diffusion: DiffusionProcess, sizes: Sizes, device: torch.device) -> LossAnalysis:
    """One checkpoint of a trajectory at the workflow's sizes (trajectory.images digits, its DDIM
    samples) against the forward passes it makes: two per batch, and one per DDIM step."""
    generator = torch.Generator().manual_seed(1)
    images = eight_bit_images(sizes.trajectory_images, diffusion.sample_shape, generator)
    noises = torch.randn((sizes.trajectory_samples, *diffusion.sample_shape), generator=generator)
    batches = [batch.to(device) for batch in images.split(sizes.trajectory_batch)]
    noises = noises.to(device)
    # The network already in memory: a checkpoint file's read is left out of the comparison.
    point = Checkpoint(0, Path("in-memory"), "ema")

    def one_checkpoint():
        follow([point], images, noises, sizes.loss_buckets, sizes.trajectory_batch, device=device,
               ddim_steps=sizes.trajectory_ddim_steps, load=lambda point, device: diffusion)  # fmt: skip

    def floor():
        with torch.inference_mode():
            for batch in batches:
                t = torch.randint(0, diffusion.timesteps, (len(batch),), generator=generator).to(device)
                diffusion.model(batch, t)
                diffusion.model(batch, torch.zeros_like(t))
            zeros = torch.zeros(len(noises), dtype=torch.long, device=device)
            for _ in range(sizes.trajectory_ddim_steps):
                diffusion.model(noises, zeros)

    return LossAnalysis(
        "trajectory, one checkpoint",
        len(images),
        TABLE_PASSES_PER_BATCH * len(batches) + sizes.trajectory_ddim_steps,
        Case("trajectory_checkpoint", one_checkpoint),
        Case("trajectory_checkpoint_floor", floor),
    )


# --- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Training:
    """train() at two lengths, and the steps between them done by hand on a ready batch."""

    batch: int
    steps: tuple[int, int]
    short: Case
    long: Case
    floor: Case

    def cases(self) -> list[Case]:
        return [self.short, self.long, self.floor]

    def summary(self, timings: Timings) -> dict:
        short, long = self.steps
        images = (long - short) * self.batch
        differences = [b - a for a, b in zip(timings.all(self.short), timings.all(self.long), strict=True)]
        loop_seconds = statistics.median(differences)
        floor = timings.median(self.floor)
        return {
            "batch": self.batch,
            "steps_timed": long - short,
            "loop_seconds": loop_seconds,
            "floor_seconds": floor,
            "images_per_second": images / loop_seconds,
            "floor_images_per_second": images / floor,
            "ratio_to_floor": loop_seconds / floor,
            "train_call_seconds": {
                str(short): timings.median(self.short),
                str(long): timings.median(self.long),
            },
        }


def training_cases(sizes: Sizes, workdir: Path, device: torch.device) -> Training:
    batch = sizes.train_batch
    generator = torch.Generator().manual_seed(0)
    train_images = torch.rand(4096 if batch > 16 else 64, 1, 28, 28, generator=generator) * 2 - 1
    validation = torch.rand(sizes.train_val_size, 1, 28, 28, generator=generator) * 2 - 1
    short, long = sizes.train_steps
    runs = itertools.count()

    def train_for(steps: int) -> Callable:
        def run():
            # A fresh directory each time: a saved state would otherwise be resumed.
            directory = workdir / f"train-{next(runs)}"
            config = TrainConfig(
                steps=steps, batch_size=batch, val_every=long, save_every=long, val_size=sizes.train_val_size
            )
            return train(
                train_images,
                validation,
                sizes.model,
                dict(sizes.diffusion),
                config,
                directory / "model.pt",
                directory / "state.pt",
                directory / "history.csv",
                device=device,
                progress=False,
            )

        return run

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = UNet(**sizes.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    x_t = train_images[:batch].to(device)
    noise = torch.randn(x_t.shape, generator=generator).to(device)
    t = torch.randint(0, sizes.timesteps, (batch,), generator=generator).to(device)

    def floor():
        for _ in range(long - short):
            loss = F.mse_loss(model(x_t, t), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return Training(
        batch,
        (short, long),
        Case("train_short", train_for(short), warm_up=True),
        Case("train_long", train_for(long)),
        Case("train_floor", floor),
    )


# --- the large convolution -----------------------------------------------------------------------


@dataclass(frozen=True)
class ConvPeak:
    """A large 3 × 3 convolution in both memory layouts: what the hardware's convolutions can do."""

    shape: tuple[int, int, int]
    flops: int
    channels_last: Case
    contiguous: Case

    def cases(self) -> list[Case]:
        return [self.channels_last, self.contiguous]

    def summary(self, timings: Timings) -> dict:
        return {
            "shape": dict(zip(("batch", "channels", "size"), self.shape, strict=True)),
            "flops": self.flops,
            "gflops_channels_last": self.flops / timings.median(self.channels_last) / 1e9,
            "gflops_contiguous": self.flops / timings.median(self.contiguous) / 1e9,
        }


def conv_cases(sizes: Sizes, device: torch.device) -> ConvPeak:
    batch, channels, size = sizes.conv
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(device).eval()
    x = torch.randn(batch, channels, size, size, device=device)
    conv_last = nn.Conv2d(channels, channels, 3, padding=1).to(device).eval()
    conv_last = conv_last.to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)

    def repeat(layer, inputs):
        def run():
            with torch.inference_mode():
                for _ in range(sizes.conv_calls):
                    layer(inputs)

        return run

    return ConvPeak(
        sizes.conv,
        flops_of(lambda: conv(x)) * sizes.conv_calls,
        Case("conv_channels_last", repeat(conv_last, x_last), warm_up=True),
        Case("conv_contiguous", repeat(conv, x), warm_up=True),
    )
