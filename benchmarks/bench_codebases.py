"""Our samplers on the networks of the codebases researchers train with, as our loaders read them,
against those networks' own forward passes; and the config check's time on the shipped model.

The networks: a lucidrains ``Unet`` from the file its own ``Trainer.save`` wrote, and
guided-diffusion's ``create_model`` UNet with a learned variance (its output's second half) and
rescaled timesteps, from a state dict saved as its ``TrainLoop`` saves one (both written by the
codebases' own code, tests/codebase_files.py). Each sampler (our DDPM over all T, our DDIM and
DPM-Solver++ 2M over ``--steps``) is timed in back-to-back pairs against as many calls of the bare
network at the same batch, called as its codebase calls it (lucidrains: ``unet(x, t)``;
guided-diffusion: ``model(x, t · 1000 / T)``); the ratio is everything our loading and sampling add.

    python benchmarks/bench_codebases.py --pairs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_sizes import REPO
from bench_timing import cpu_model, paired_ratios, usable_cores

from diffusion_diagnostics import load_model
from diffusion_diagnostics.config_check import config_check, reading_errors
from diffusion_diagnostics.runtime import keep_freed_memory, resolve_device
from diffusion_diagnostics.solvers import build_scheduler, solve

sys.path.insert(0, str(REPO / "tests"))  # the files as the codebases' own code writes them
from codebase_files import (  # noqa: E402
    guided_diffusion_entry,
    save_guided_diffusion_model,
    save_lucidrains_trainer_file,
)

T = 50  # both files' training timesteps: DDPM's forwards
LUCIDRAINS_UNET = {"dim": 32, "dim_mults": [1, 2, 4], "channels": 1, "flash_attn": False}
GUIDED_MODEL = {
    "image_size": 32,
    "num_channels": 64,
    "num_res_blocks": 2,
    "channel_mult": "1,2,2",
    "attention_resolutions": "16",
    "num_heads": 4,
    "learn_sigma": True,
    "use_scale_shift_norm": True,
}
CHECK_IMAGES = 64  # as describe_model checks


def lucidrains_model(folder: Path, device: torch.device):
    """(our process, the bare network's forward, how we read it) for lucidrains' Trainer file."""
    _, path = save_lucidrains_trainer_file(folder, LUCIDRAINS_UNET, 28, T, 10)
    entry = {
        "entry_point": "denoising_diffusion_pytorch:Unet",
        "kwargs": LUCIDRAINS_UNET,
        "weights": str(path),
        "sample_shape": [1, 28, 28],
    }
    diffusion, info = load_model(entry, device)
    return diffusion, diffusion.model, info["description"]


def guided_model(folder: Path, device: torch.device):
    """(our process, the bare network's forward, how we read it) for guided-diffusion's UNet."""
    network, _, path = save_guided_diffusion_model(folder, GUIDED_MODEL, T, steps=1)
    entry = guided_diffusion_entry(path, GUIDED_MODEL, T)
    diffusion, info = load_model(entry, device)
    bare = network.to(device).eval()
    return diffusion, (lambda x, t: bare(x, t.float() * (1000.0 / T))), info["description"]


def sampler_runs(diffusion, noise: torch.Tensor, steps: int) -> dict[str, tuple]:
    """Each sampler's run and the timesteps its forwards visit (for the floor)."""
    scheduler = build_scheduler("dpmsolver++2m", diffusion.config)
    _, solver_nfe = solve(diffusion, scheduler, steps, noise)
    return {
        "ddpm": (lambda: diffusion.sample(noise, generator=torch.Generator(noise.device).manual_seed(1)), T),
        "ddim": (lambda: diffusion.sample_ddim(noise, steps), steps),
        "dpmsolver++2m": (
            lambda: solve(diffusion, build_scheduler("dpmsolver++2m", diffusion.config), steps, noise),
            solver_nfe,
        ),
    }


def floor_of(forward, noise: torch.Tensor, evaluations: int):
    """The bare network's forwards alone: as many calls at the same batch, spread over t."""
    timesteps = torch.linspace(T - 1, 0, evaluations).round().long().tolist()
    batches = [torch.full((len(noise),), t, device=noise.device) for t in timesteps]

    def run():
        with torch.inference_mode():
            for t in batches:
                forward(noise, t)

    return run


def overhead_rows(name: str, diffusion, forward, args, device) -> list[dict]:
    noise = torch.randn((args.batch, *diffusion.sample_shape), generator=torch.Generator().manual_seed(0))
    noise = noise.to(device)
    rows = []
    for sampler, (run, evaluations) in sampler_runs(diffusion, noise, args.steps).items():
        ratios = paired_ratios({sampler: run}, floor_of(forward, noise, evaluations), args.pairs, device)
        values = ratios[sampler]
        rows.append(
            {"model": name, "sampler": sampler, "nfe": evaluations, "median_ratio": statistics.median(values),
             "ratios": values}
        )  # fmt: skip
    return rows


def config_check_seconds(device: torch.device, reps: int) -> dict:
    """reading_errors and config_check on the shipped model, as describe_model runs them (64 images
    in [-1, 1]: random ones, the time does not depend on what they show)."""
    diffusion, _ = load_model(REPO / "best_model.pt", device)
    images = (
        torch.rand((CHECK_IMAGES, *diffusion.sample_shape), generator=torch.Generator().manual_seed(0)) * 2
        - 1
    )
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        config_check(reading_errors(diffusion, images), diffusion)
        seconds.append(time.perf_counter() - start)
    return {"median_seconds": statistics.median(seconds), "seconds": seconds}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--reps", type=int, default=3, help="config check repetitions (median reported)")
    parser.add_argument("--pairs", type=int, default=5, help="back-to-back pairs per sampler")
    parser.add_argument("--steps", type=int, default=10, help="DDIM and DPM-Solver++ 2M steps")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(usable_cores())
    keep_freed_memory()
    device = resolve_device(args.device)
    rows, descriptions = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for name, build in (("lucidrains", lucidrains_model), ("guided-diffusion", guided_model)):
            diffusion, forward, descriptions[name] = build(Path(folder) / name, device)
            rows += overhead_rows(name, diffusion, forward, args, device)
    report = {
        "device": str(device),
        "cpu": cpu_model(),
        "batch": args.batch,
        "models": descriptions,
        "rows": rows,
        "config_check": config_check_seconds(device, args.reps),
    }
    print(json.dumps(report, indent=1))
    print("\n| network | sampler | NFE | ours ÷ its forwards alone (median of pairs) |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['model']} | {row['sampler']} | {row['nfe']} | {row['median_ratio']:.3f} |")
    print(f"\nconfig check on the shipped model: {report['config_check']['median_seconds']:.2f} s (median)")
    return report


if __name__ == "__main__":
    main()
