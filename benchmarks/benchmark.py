"""How close the samplers, the loss analysis and training get to the network's own cost.

    python benchmarks/benchmark.py                 # full sizes (config.yaml's defaults), ~45 min on 2 cores
    python benchmarks/benchmark.py --quick         # tiny sizes, seconds: checks that everything runs

Every case runs in this one process, round-robin (case A, B, C, then A, B, C again, the starting
case rotated each repetition), and the table reports the median over the repetitions. A "floor"
is the same work with everything but the network taken away: the same number of forward passes
at the same batch under ``torch.inference_mode`` (sampling, loss analysis), or the same number of
forward + backward + optimizer steps on a ready batch (training). See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from diffusion_diagnostics import DiffusionProcess, UNet, per_timestep_loss
from diffusion_diagnostics.checkpoint import load_checkpoint
from diffusion_diagnostics.diffusion import trailing_timesteps
from diffusion_diagnostics.graphs import can_capture
from diffusion_diagnostics.interpolation import draw_endpoints, interpolate, interpolation_grid
from diffusion_diagnostics.runtime import keep_freed_memory, resolve_device
from diffusion_diagnostics.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINTS = ("results/train/best_model.pt", "best_model.pt")


# --- sizes ---------------------------------------------------------------------------------------


def full_sizes() -> dict:
    """The workflow's defaults, read from config.yaml so the benchmark follows them."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    grid = config["interpolation"]
    return {
        "model": {key: config["model"][key] for key in ("base_channels", "channel_mults", "num_res_blocks")},
        "diffusion": {key: config["diffusion"][key] for key in ("timesteps", "beta_start", "beta_end")},
        "rows": grid["n"],
        "columns": grid["steps"],
        "ddim_steps": sorted(
            {config["diffusion"]["timesteps"], 250, 100, grid["ddim"]["num_steps"]}, reverse=True
        ),
        "workflow_ddim_steps": grid["ddim"]["num_steps"],
        "loss_batch": config["timestep_loss"]["batch_size"],
        "loss_batches": config["timestep_loss"]["num_batches"],
        "loss_buckets": config["timestep_loss"]["buckets"],
        "train_batch": config["train"]["batch_size"],
        # train() is timed at two lengths; the difference is the steady-state cost of its loop.
        "train_steps": (10, 60),
        "train_val_size": config["train"]["val_size"],
        # The practical peak: a large 3 × 3 convolution (batch, channels in = out, size).
        "conv": (64, 256, 28),
        "conv_calls": 3,
        # Paired short runs: a sampler of this many steps against the same forwards alone.
        "paired_steps": 10,
        "pairs": 30,
        "diffusers_blocks": (32, 64, 64),
    }


def quick_sizes() -> dict:
    return {
        "model": {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1},
        "diffusion": {"timesteps": 10, "beta_start": 1e-3, "beta_end": 0.2},
        "rows": 2,
        "columns": 3,
        "ddim_steps": [10, 5, 2],
        "workflow_ddim_steps": 2,
        "loss_batch": 16,
        "loss_batches": 2,
        "loss_buckets": 2,
        "train_batch": 8,
        "train_steps": (2, 4),
        "train_val_size": 16,
        "conv": (2, 32, 14),
        "conv_calls": 1,
        "paired_steps": 3,
        "pairs": 3,
        "diffusers_blocks": (8, 16),
    }


# --- timing --------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin(cases: dict[str, Callable], reps: int, device: torch.device) -> tuple[dict, dict]:
    """Seconds per case per repetition, interleaved; and each case's last return value."""
    names = list(cases)
    seconds = {name: [] for name in names}
    outputs = {}
    busy, own, wall = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            outputs[name] = cases[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
        done = ", ".join(f"{name} {seconds[name][-1]:.2f}s" for name in names)
        print(f"repetition {rep + 1}/{reps}: {done}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - wall
    if busy is not None:
        others = max(0.0, busy_cpu_seconds() - busy - (own_cpu_seconds() - own))
        outputs["_other_processes"] = {"cpu_seconds": others, "wall_seconds": wall}
    return seconds, outputs


def busy_cpu_seconds() -> float | None:
    """CPU time used by the whole machine so far (Linux), to tell whether others shared it."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    return None


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def flops_of(function: Callable) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        function()
    return counter.get_total_flops()


# --- the machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --- the network and its inputs ------------------------------------------------------------------


def our_diffusion(sizes: dict, checkpoint: Path | None, device: torch.device) -> tuple[DiffusionProcess, str]:
    if checkpoint is not None:
        diffusion, _ = load_checkpoint(checkpoint, device)
        if diffusion.model.config["base_channels"] != sizes["model"]["base_channels"] or list(
            diffusion.model.config["channel_mults"]
        ) != list(sizes["model"]["channel_mults"]):
            print(f"warning: {checkpoint} is not config.yaml's default network", file=sys.stderr)
        return diffusion, f"checkpoint {checkpoint}"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = UNet(**sizes["model"])
        # The output layer starts at zero (the zero predictor); random weights there instead,
        # so that the accuracy rows compare samplers of a network that does something.
        nn.init.normal_(model.conv_out.weight, std=0.02)
    diffusion = DiffusionProcess(model, **sizes["diffusion"]).to(device).eval()
    return diffusion, "random (no trained checkpoint found; pixel errors are those of an untrained network)"


def grid_endpoints(sizes: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The workflow's endpoints (seed 0); the grid decodes their interpolation, row by row."""
    return draw_endpoints(sizes["rows"], (1, 28, 28), seed=0)


def forward_floor(model: nn.Module, x: torch.Tensor, timesteps: list[int]) -> Callable:
    """The network alone: one forward per timestep, the same batch, no sampler arithmetic."""
    batch = [torch.full((len(x),), t, dtype=torch.long, device=x.device) for t in timesteps]

    def run():
        with torch.inference_mode():
            for t in batch:
                model(x, t)

    return run


def paired_overhead(diffusion: DiffusionProcess, x: torch.Tensor, sizes: dict) -> dict:
    """Each sampler's time over its forwards alone, from short runs alternated pair by pair.

    The whole-grid rows compare runs minutes apart, and this machine's speed drifts by 5-10 % over
    minutes, more than the few per cent the loop may cost. Here a ``paired_steps``-step sampler and
    the same forwards alone run back to back, ``pairs`` times (order alternating): the median of the
    pairs' ratios sees the loop's own cost, not the drift. The sampler is the same code with a
    shorter schedule, so its per-run set-up counts ``1000 / paired_steps`` times more than in a grid.
    """
    steps, device = sizes["paired_steps"], x.device
    schedule = {key: sizes["diffusion"][key] for key in ("beta_start", "beta_end")}
    short = DiffusionProcess(diffusion.model, steps, **schedule).to(device)
    runs = {
        "floor": forward_floor(diffusion.model, x, list(range(steps - 1, -1, -1))),
        "ddpm": lambda: short.sample(x, generator=torch.Generator(device).manual_seed(1)),
        "ddim": lambda: short.sample_ddim(x, steps),
    }
    for run in runs.values():
        run()
    ratios = {"ddpm": [], "ddim": []}
    for pair in range(sizes["pairs"]):
        seconds = {}
        for name in list(runs)[:: 1 if pair % 2 == 0 else -1]:
            synchronize(device)
            start = time.perf_counter()
            runs[name]()
            synchronize(device)
            seconds[name] = time.perf_counter() - start
        for name, values in ratios.items():
            values.append(seconds[name] / seconds["floor"])
    return {
        name: {"steps": steps, "pairs": len(values), "median_ratio": median(values), "ratios": values}
        for name, values in ratios.items()
    }


# --- diffusers, for reference --------------------------------------------------------------------


def diffusers_reference(sizes: dict, latents: torch.Tensor, device: torch.device) -> tuple[dict, dict]:
    """Cases for diffusers' scheduler loops around a UNet2DModel laid out like ours, or why not."""
    try:
        import diffusers
        from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    except ImportError as error:
        return {}, {
            "status": "skipped",
            "reason": f"diffusers is not installed ({error}); pip install -e '.[bench]'",
        }

    blocks = sizes["diffusers_blocks"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=28,
            in_channels=1,
            out_channels=1,
            block_out_channels=blocks,
            layers_per_block=sizes["model"]["num_res_blocks"],
            down_block_types=("DownBlock2D",) * len(blocks),
            up_block_types=("UpBlock2D",) * len(blocks),
            norm_num_groups=8,
            add_attention=False,
        )
    unet = unet.to(device).eval()
    schedule = {
        "num_train_timesteps": sizes["diffusion"]["timesteps"],
        "beta_schedule": "linear",
        "beta_start": sizes["diffusion"]["beta_start"],
        "beta_end": sizes["diffusion"]["beta_end"],
        "clip_sample": True,
    }
    ddpm = DDPMScheduler(**schedule)
    ddim = DDIMScheduler(**schedule, timestep_spacing="trailing")
    x_T = latents.to(device)
    steps = sizes["workflow_ddim_steps"]

    def loop(scheduler, num_steps, generator=None):
        def run():
            scheduler.set_timesteps(num_steps)
            x = x_T
            with torch.no_grad():  # as diffusers' own pipelines do
                for t in scheduler.timesteps:
                    eps = unet(x, t).sample
                    x = scheduler.step(eps, t, x, generator=generator).prev_sample
            return x

        return run

    def ddpm_run():
        return loop(ddpm, sizes["diffusion"]["timesteps"], torch.Generator(device).manual_seed(1))()

    def floor():
        ddim.set_timesteps(steps)
        with torch.no_grad():
            for t in ddim.timesteps:
                unet(x_T, t).sample  # noqa: B018 - the forward is the work

    info = {
        "status": "ok",
        "version": diffusers.__version__,
        "model": f"UNet2DModel(block_out_channels={list(blocks)}, layers_per_block="
        f"{sizes['model']['num_res_blocks']}, DownBlock2D/UpBlock2D, norm_num_groups=8, no attention)",
        "flops_per_forward": flops_of(lambda: unet(x_T, torch.tensor(1, device=device)).sample),
        "ddim_steps": steps,
    }
    cases = {
        "diffusers_ddpm": ddpm_run,
        f"diffusers_ddim_{steps}": loop(ddim, steps),
        f"diffusers_floor_{steps}": floor,
    }
    return cases, info


# --- loss analysis and training ------------------------------------------------------------------


def loss_cases(diffusion: DiffusionProcess, sizes: dict, device: torch.device) -> dict:
    batch, batches = sizes["loss_batch"], sizes["loss_batches"]
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch * batches, 1, 28, 28, generator=generator) * 2 - 1
    # The same kind of loader as the workflow's heldout_loader: a DataLoader over a TensorDataset.
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=batch)
    x_t = images[:batch].to(device)
    timesteps = torch.randint(0, diffusion.timesteps, (batch,), generator=generator).to(device)

    def analysis():
        return per_timestep_loss(diffusion, loader, batches, sizes["loss_buckets"])

    def floor():
        with torch.inference_mode():
            for _ in range(batches):
                diffusion.model(x_t, timesteps)

    return {"loss": analysis, "loss_floor": floor}


def training_cases(sizes: dict, workdir: Path, device: torch.device) -> dict:
    batch = sizes["train_batch"]
    generator = torch.Generator().manual_seed(0)
    train_images = torch.rand(4096 if batch > 16 else 64, 1, 28, 28, generator=generator) * 2 - 1
    heldout = torch.rand(sizes["train_val_size"], 1, 28, 28, generator=generator) * 2 - 1
    short, long = sizes["train_steps"]
    runs = iter(range(10**6))

    def train_for(steps: int) -> Callable:
        def run():
            # A fresh directory each time: a saved state would otherwise be resumed.
            directory = workdir / f"train-{next(runs)}"
            config = TrainConfig(
                steps=steps,
                batch_size=batch,
                val_every=long,
                save_every=long,
                val_size=sizes["train_val_size"],
            )
            return train(
                train_images,
                heldout,
                sizes["model"],
                dict(sizes["diffusion"]),
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
        model = UNet(**sizes["model"]).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    x_t = train_images[:batch].to(device)
    noise = torch.randn(x_t.shape, generator=generator).to(device)
    t = torch.randint(0, sizes["diffusion"]["timesteps"], (batch,), generator=generator).to(device)

    def floor():
        for _ in range(long - short):
            loss = F.mse_loss(model(x_t, t), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return {"train_short": train_for(short), "train_long": train_for(long), "train_floor": floor}


# --- the large convolution -----------------------------------------------------------------------


def conv_cases(sizes: dict, device: torch.device) -> tuple[dict, int]:
    batch, channels, size = sizes["conv"]
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(device).eval()
    x = torch.randn(batch, channels, size, size, device=device)
    conv_last = nn.Conv2d(channels, channels, 3, padding=1).to(device).eval()
    conv_last = conv_last.to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)

    def repeat(layer, inputs):
        def run():
            with torch.inference_mode():
                for _ in range(sizes["conv_calls"]):
                    layer(inputs)

        return run

    flops = flops_of(lambda: conv(x)) * sizes["conv_calls"]
    return {"conv_channels_last": repeat(conv_last, x_last), "conv_contiguous": repeat(conv, x)}, flops


# --- the report ----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def build_report(args, sizes, info, seconds, outputs, flops, diffusers_info, conv_flops, paired) -> dict:
    med = {name: median(values) for name, values in seconds.items()}
    images = sizes["rows"] * sizes["columns"]
    timesteps = sizes["diffusion"]["timesteps"]
    per_forward = flops["network_forward"]

    def sampler_row(name: str, forwards: int) -> dict:
        floor = med[f"floor_{forwards}"]
        return {
            "forwards": forwards,
            "seconds": med[name],
            "floor_seconds": floor,
            "ratio_to_floor": med[name] / floor,
            "network_gflops_while_sampling": per_forward * forwards / med[name] / 1e9,
            "all_seconds": seconds[name],
        }

    samplers = {"ddpm": sampler_row("ddpm", timesteps)}
    for steps in sizes["ddim_steps"]:
        samplers[f"ddim_{steps}"] = sampler_row(f"ddim_{steps}", steps)
    floors = {
        name: {"seconds": med[name], "all_seconds": seconds[name]}
        for name in seconds
        if name.startswith("floor_")
    }

    peak = conv_flops / med["conv_channels_last"] / 1e9
    floor_gflops = per_forward * timesteps / med[f"floor_{timesteps}"] / 1e9
    network = {
        "flops_per_forward": per_forward,
        "flops_per_image": per_forward / images,
        "batch": images,
        "gflops_in_floor": floor_gflops,
        "gflops_while_ddpm": samplers["ddpm"]["network_gflops_while_sampling"],
        "fraction_of_conv_peak_in_floor": floor_gflops / peak,
        "fraction_of_conv_peak_while_ddpm": samplers["ddpm"]["network_gflops_while_sampling"] / peak,
    }
    conv = {
        "shape": dict(zip(("batch", "channels", "size"), sizes["conv"], strict=True)),
        "flops": conv_flops,
        "gflops_channels_last": peak,
        "gflops_contiguous": conv_flops / med["conv_contiguous"] / 1e9,
    }

    reference = outputs[f"ddim_{max(sizes['ddim_steps'])}"]
    accuracy = {}
    for steps in sizes["ddim_steps"]:
        if steps == max(sizes["ddim_steps"]):
            continue
        difference = (outputs[f"ddim_{steps}"] - reference).double()
        accuracy[str(steps)] = {
            "rmse": difference.pow(2).mean().sqrt().item(),
            "max_abs": difference.abs().max().item(),
            "speedup_vs_reference": med[f"ddim_{max(sizes['ddim_steps'])}"] / med[f"ddim_{steps}"],
        }

    bfloat16 = {}
    for name in ("ddpm", f"ddim_{sizes['workflow_ddim_steps']}"):
        difference = (outputs[f"{name}_bf16"] - outputs[name]).double()
        bfloat16[name] = {
            "forwards": samplers[name]["forwards"],
            "seconds": med[f"{name}_bf16"],
            "float32_seconds": med[name],
            "speedup": med[name] / med[f"{name}_bf16"],
            "rmse_to_float32": difference.pow(2).mean().sqrt().item(),
            "max_abs_to_float32": difference.abs().max().item(),
            "all_seconds": seconds[f"{name}_bf16"],
        }

    cuda_graphs = {}  # only where the device can capture
    for name in [name for name, _, _ in graph_grids(sizes) if f"{name}_graph" in med]:
        for precision, eager in (("float32", name), ("bfloat16", f"{name}_bf16")):
            graphed = f"{eager}_graph"
            difference = (outputs[graphed] - outputs[eager]).double()
            cuda_graphs[graphed] = {
                "forwards": samplers[name]["forwards"],
                "precision": precision,
                "seconds": med[graphed],
                "eager_seconds": med[eager],
                "speedup": med[eager] / med[graphed],
                "speedup_vs_float32_eager": med[name] / med[graphed],
                "rmse_to_eager": difference.pow(2).mean().sqrt().item(),
                "max_abs_to_eager": difference.abs().max().item(),
                "all_seconds": seconds[graphed],
            }

    loss_images = sizes["loss_batch"] * sizes["loss_batches"]
    timestep_loss = {
        "images": loss_images,
        "seconds": med["loss"],
        "floor_seconds": med["loss_floor"],
        "images_per_second": loss_images / med["loss"],
        "floor_images_per_second": loss_images / med["loss_floor"],
        "ratio_to_floor": med["loss"] / med["loss_floor"],
    }
    short, long = sizes["train_steps"]
    train_images = (long - short) * sizes["train_batch"]
    loop_seconds = median([b - a for a, b in zip(seconds["train_short"], seconds["train_long"], strict=True)])
    training = {
        "batch": sizes["train_batch"],
        "steps_timed": long - short,
        "loop_seconds": loop_seconds,
        "floor_seconds": med["train_floor"],
        "images_per_second": train_images / loop_seconds,
        "floor_images_per_second": train_images / med["train_floor"],
        "ratio_to_floor": loop_seconds / med["train_floor"],
        "train_call_seconds": {str(short): med["train_short"], str(long): med["train_long"]},
    }

    reference_info = dict(diffusers_info)
    if diffusers_info.get("status") == "ok":
        steps = diffusers_info["ddim_steps"]
        reference_info.update(
            {
                "flops_ratio_to_ours": diffusers_info["flops_per_forward"] / per_forward,
                "ddpm_seconds": med["diffusers_ddpm"],
                "ddim_seconds": med[f"diffusers_ddim_{steps}"],
                "floor_seconds": med[f"diffusers_floor_{steps}"],
                "ddim_ratio_to_floor": med[f"diffusers_ddim_{steps}"] / med[f"diffusers_floor_{steps}"],
                "network_gflops": diffusers_info["flops_per_forward"]
                * steps
                / med[f"diffusers_floor_{steps}"]
                / 1e9,
                "ours_ddpm_speedup": med["diffusers_ddpm"] / med["ddpm"],
                "ours_ddim_speedup": med[f"diffusers_ddim_{steps}"] / med[f"ddim_{steps}"],
            }
        )

    slowest_sampler = max(row["median_ratio"] for row in paired.values())
    workflow_steps = sizes["workflow_ddim_steps"]
    targets = [
        ("every sampler <= 1.03 x its floor (paired short runs)", slowest_sampler, slowest_sampler <= 1.03),
        (
            "network >= 60 % of the large-conv GFLOP/s while sampling",
            network["fraction_of_conv_peak_while_ddpm"],
            network["fraction_of_conv_peak_while_ddpm"] >= 0.6,
        ),
        ("DDPM grid <= 90 s", samplers["ddpm"]["seconds"], samplers["ddpm"]["seconds"] <= 90),
        (
            f"DDIM S = {workflow_steps} >= 15 x faster than S = {timesteps}",
            med[f"ddim_{timesteps}"] / med[f"ddim_{workflow_steps}"],
            med[f"ddim_{timesteps}"] / med[f"ddim_{workflow_steps}"] >= 15,
        ),
        (
            "per_timestep_loss <= 1.1 x its floor",
            timestep_loss["ratio_to_floor"],
            timestep_loss["ratio_to_floor"] <= 1.1,
        ),
        ("training <= 1.1 x its floor", training["ratio_to_floor"], training["ratio_to_floor"] <= 1.1),
    ]
    if reference_info.get("status") == "ok":
        targets.append(
            (
                "DDPM grid ahead of diffusers",
                reference_info["ours_ddpm_speedup"],
                reference_info["ours_ddpm_speedup"] > 1,
            )
        )
    if cuda_graphs:
        fastest = min(row["seconds"] for name, row in cuda_graphs.items() if name.startswith("ddpm"))
        targets.append(("DDPM grid on the GPU, CUDA graph: seconds (<= 10 s)", fastest, fastest <= 10))
    others = outputs.get("_other_processes")
    return {
        "mode": "quick" if args.quick else "full",
        "machine": info,
        "other_processes": others,
        "repetitions": args.reps,
        "sizes": {key: list(value) if isinstance(value, tuple) else value for key, value in sizes.items()},
        "weights": flops["weights"],
        "network": network,
        "conv_peak": conv,
        "floors": floors,
        "samplers": samplers,
        "paired_overhead": paired,
        "ddim_accuracy": accuracy,
        "bfloat16": bfloat16,
        "cuda_graphs": cuda_graphs,
        "diffusers": reference_info,
        "timestep_loss": timestep_loss,
        "training": training,
        "targets": [{"target": name, "value": value, "met": bool(met)} for name, value, met in targets],
    }


def graph_grids(sizes: dict) -> list[tuple[str, str, int]]:
    """(case name, sampler, DDIM steps) of the grids also timed as CUDA graphs."""
    steps = sizes["workflow_ddim_steps"]
    return [("ddpm", "ddpm", steps), (f"ddim_{steps}", "ddim", steps)]


def grid_label(name: str, row: dict) -> str:
    return "DDPM grid" if name == "ddpm" else f"DDIM grid, S = {row['forwards']}"


def markdown(report: dict) -> str:
    m, n, c = report["machine"], report["network"], report["conv_peak"]
    lines = [
        f"Machine: {m['cpu']} ({m['platform']}), {m['cores']} cores ({m['cores_usable']} usable), "
        f"torch {m['torch']} with {m['torch_threads']} threads, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else ""),
        f"Weights: {report['weights']}. Median of {report['repetitions']} interleaved repetitions; "
        f"glibc keeps freed memory: {'yes' if m['keep_freed_memory'] else 'no'}.",
        "",
        "| case | forwards | seconds | floor s | ratio to floor | network GFLOP/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in report["samplers"].items():
        lines.append(
            f"| {grid_label(name, row)} | {row['forwards']} | {row['seconds']:.2f} | "
            f"{row['floor_seconds']:.2f} | {row['ratio_to_floor']:.3f} | "
            f"{row['network_gflops_while_sampling']:.0f} |"
        )
    d = report["diffusers"]
    if d.get("status") == "ok":
        forwards = report["samplers"]["ddpm"]["forwards"]
        ddpm_gflops = d["flops_per_forward"] * forwards / d["ddpm_seconds"] / 1e9
        lines.append(
            f"| diffusers DDPMScheduler loop | {forwards} | {d['ddpm_seconds']:.2f} | | | {ddpm_gflops:.0f} |"
        )
        lines.append(
            f"| diffusers DDIMScheduler loop, S = {d['ddim_steps']} | {d['ddim_steps']} | "
            f"{d['ddim_seconds']:.2f} | {d['floor_seconds']:.2f} | {d['ddim_ratio_to_floor']:.3f} | "
            f"{d['network_gflops']:.0f} |"
        )
    else:
        lines.append(f"| diffusers reference | | skipped: {d['reason']} | | | |")
    p = report["paired_overhead"]
    lines += [
        "",
        f"Paired short runs ({p['ddpm']['steps']}-step samplers against the same forwards alone, "
        f"back to back, {p['ddpm']['pairs']} pairs): median ratio DDPM {p['ddpm']['median_ratio']:.3f}, "
        f"DDIM {p['ddim']['median_ratio']:.3f}.",
    ]
    loss, tr = report["timestep_loss"], report["training"]
    lines += [
        "",
        "| work | images/s | floor images/s | ratio to floor |",
        "| --- | ---: | ---: | ---: |",
        f"| per_timestep_loss ({loss['images']} images) | {loss['images_per_second']:.0f} | "
        f"{loss['floor_images_per_second']:.0f} | {loss['ratio_to_floor']:.3f} |",
        f"| training, batch {tr['batch']} ({tr['steps_timed']} steps) | {tr['images_per_second']:.0f} | "
        f"{tr['floor_images_per_second']:.0f} | {tr['ratio_to_floor']:.3f} |",
        "",
        f"Network: {n['flops_per_forward'] / 1e9:.2f} GFLOP per forward at batch {n['batch']} "
        f"({n['flops_per_image'] / 1e6:.0f} MFLOP per image); {n['gflops_in_floor']:.0f} GFLOP/s alone, "
        f"{n['gflops_while_ddpm']:.0f} GFLOP/s while DDPM sampling = "
        f"{100 * n['fraction_of_conv_peak_while_ddpm']:.0f} % of the large convolution's "
        f"{c['gflops_channels_last']:.0f} GFLOP/s (channels-last; {c['gflops_contiguous']:.0f} GFLOP/s "
        f"in the default layout; batch {c['shape']['batch']}, {c['shape']['channels']} -> "
        f"{c['shape']['channels']} channels, {c['shape']['size']} x {c['shape']['size']}).",
    ]
    if d.get("status") == "ok":
        lines.append(
            f"diffusers {d['version']}: {d['model']}, {d['flops_per_forward'] / 1e9:.2f} GFLOP per forward "
            f"({d['flops_ratio_to_ours']:.3f} x ours); ours is {d['ours_ddpm_speedup']:.2f} x faster on the "
            f"DDPM grid, {d['ours_ddim_speedup']:.2f} x on the DDIM S = {d['ddim_steps']} grid."
        )
    lines += [
        "",
        "| DDIM grid vs S = max | pixel RMSE | max abs error | speed-up |",
        "| --- | ---: | ---: | ---: |",
    ]
    for steps, row in report["ddim_accuracy"].items():
        lines.append(
            f"| S = {steps} | {row['rmse']:.4f} | {row['max_abs']:.4f} | {row['speedup_vs_reference']:.1f} |"
        )
    lines += [
        "",
        "| precision: bfloat16 | seconds | float32 s | speed-up | pixel RMSE vs float32 | max abs error |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in report["bfloat16"].items():
        lines.append(
            f"| {grid_label(name, row)} | {row['seconds']:.2f} | {row['float32_seconds']:.2f} | "
            f"{row['speedup']:.2f} | {row['rmse_to_float32']:.4f} | {row['max_abs_to_float32']:.4f} |"
        )
    lines.append("")
    if report["cuda_graphs"]:
        lines += [
            "| CUDA graph | precision | seconds | eager s | speed-up | vs float32 eager | "
            "pixel RMSE vs eager | max abs error |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, row in report["cuda_graphs"].items():
            lines.append(
                f"| {grid_label('ddpm' if name.startswith('ddpm') else name, row)} | {row['precision']} | "
                f"{row['seconds']:.2f} | {row['eager_seconds']:.2f} | {row['speedup']:.2f} | "
                f"{row['speedup_vs_float32_eager']:.2f} | {row['rmse_to_eager']:.2g} | "
                f"{row['max_abs_to_eager']:.2g} |"
            )
    else:
        lines.append(f"CUDA graphs: not timed, the device ({m['device']}) cannot capture them.")
    others = report["other_processes"]
    if others is not None:
        share = others["cpu_seconds"] / (others["wall_seconds"] * (m["cores_usable"] or 1))
        lines += [
            "",
            f"Other processes used {others['cpu_seconds']:.1f} CPU-seconds while this ran "
            f"({100 * share:.1f} % of the machine){'; the timings are suspect' if share > 0.05 else ''}.",
        ]
    if report["mode"] == "quick":
        lines += ["", "Quick mode: tiny sizes, the targets below are only meaningful in full mode."]
    lines += ["", "| target | value | met |", "| --- | ---: | --- |"]
    for target in report["targets"]:
        lines.append(f"| {target['target']} | {target['value']:.3f} | {'yes' if target['met'] else 'no'} |")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in seconds")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/results.json", help="JSON output")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a trained checkpoint for the accuracy rows (default: results/train/best_model.pt or "
        "best_model.pt when present; random weights otherwise; --quick always uses random weights)",
    )
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers reference")
    parser.add_argument(
        "--no-keep-freed-memory",
        action="store_true",
        help="leave glibc's malloc as it is (the workflow's scripts call runtime.keep_freed_memory)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = args.threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    torch.set_num_threads(threads)
    # As every workflow script does (workflow.run_rule): reuse freed blocks instead of page faults.
    kept = False if args.no_keep_freed_memory else keep_freed_memory()
    device = resolve_device(args.device)
    sizes = quick_sizes() if args.quick else full_sizes()
    checkpoint = args.checkpoint
    if checkpoint is None and not args.quick:
        checkpoint = next((REPO / p for p in DEFAULT_CHECKPOINTS if (REPO / p).is_file()), None)
    info = machine(device)
    info["keep_freed_memory"] = kept
    print(f"benchmark ({'quick' if args.quick else 'full'}): {json.dumps(info)}", file=sys.stderr, flush=True)

    diffusion, weights = our_diffusion(sizes, None if args.quick else checkpoint, device)
    model = diffusion.model
    z0, z1 = grid_endpoints(sizes)
    latents = interpolate(z0, z1, sizes["columns"]).flatten(0, 1)
    x_T = latents.to(device)
    timesteps = diffusion.timesteps
    flops = {
        "network_forward": flops_of(
            lambda: model(x_T, torch.zeros(len(x_T), dtype=torch.long, device=device))
        ),
        "weights": weights,
    }

    cases: dict[str, Callable] = {}
    for forwards in sorted({timesteps, *sizes["ddim_steps"]}, reverse=True):
        cases[f"floor_{forwards}"] = forward_floor(model, x_T, trailing_timesteps(timesteps, forwards))

    def grid(
        sampler: str, ddim_steps: int = 50, autocast: torch.dtype | None = None, graphs: bool = False
    ) -> Callable:
        def run():
            generator = torch.Generator(device).manual_seed(1)
            # The workflow's `precision` and CUDA-graph choice, set per case.
            diffusion.autocast_dtype, diffusion.cuda_graphs = autocast, graphs
            return interpolation_grid(
                diffusion,
                z0,
                z1,
                steps=sizes["columns"],
                sampler=sampler,
                ddim_steps=ddim_steps,
                batch_size=len(latents),
                generator=generator,
                device=device,
                progress=False,
            )

        return run

    cases["ddpm"] = grid("ddpm")
    for steps in sizes["ddim_steps"]:
        cases[f"ddim_{steps}"] = grid("ddim", steps)
    # precision: bfloat16, the same grids with the network under bf16 autocast.
    cases["ddpm_bf16"] = grid("ddpm", autocast=torch.bfloat16)
    cases[f"ddim_{sizes['workflow_ddim_steps']}_bf16"] = grid(
        "ddim", sizes["workflow_ddim_steps"], autocast=torch.bfloat16
    )
    if can_capture(device):
        # Each sampler step replayed as a CUDA graph (capture included in the time), in both precisions.
        for name, sampler, steps in graph_grids(sizes):
            cases[f"{name}_graph"] = grid(sampler, steps, graphs=True)
            cases[f"{name}_bf16_graph"] = grid(sampler, steps, autocast=torch.bfloat16, graphs=True)

    if args.no_diffusers:
        reference_cases, diffusers_info = {}, {"status": "skipped", "reason": "--no-diffusers"}
    else:
        reference_cases, diffusers_info = diffusers_reference(sizes, latents, device)
    cases.update(reference_cases)
    cases.update(loss_cases(diffusion, sizes, device))
    conv, conv_flops = conv_cases(sizes, device)
    cases.update(conv)

    with tempfile.TemporaryDirectory(prefix="benchmark-train-") as workdir:
        cases.update(training_cases(sizes, Path(workdir), device))
        # Warm-up: first calls build oneDNN primitives and allocator pools; not timed.
        for name in ("floor_" + str(min(sizes["ddim_steps"])), "loss_floor", "train_short", *conv):
            cases[name]()
        for name in reference_cases:
            if name.startswith("diffusers_floor"):
                cases[name]()
        seconds, outputs = round_robin(cases, args.reps, device)
    paired = paired_overhead(diffusion, x_T, sizes)

    report = build_report(args, sizes, info, seconds, outputs, flops, diffusers_info, conv_flops, paired)
    table = markdown(report)
    report["markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
