"""Each diffusers solver on our model against the network evaluations it makes, alone: what the
solver's own arithmetic (its step, scale_model_input, the counting) adds to a cell of the sampler
table.

    python benchmarks/bench_solvers.py --reps 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_cases import our_diffusion
from bench_sizes import REPO, full_sizes
from bench_timing import Case, round_robin, usable_cores

from diffusion_diagnostics.runtime import keep_freed_memory, resolve_device
from diffusion_diagnostics.solvers import SOLVERS, build_scheduler, solve


def solver_cases(diffusion, kind: str, steps: int, noise: torch.Tensor) -> tuple[Case, Case, int]:
    """The solver's run, and its floor: as many forwards of the same batch as it evaluated."""
    scheduler = build_scheduler(kind, diffusion.config)
    _, evaluations = solve(diffusion, scheduler, steps, noise, torch.Generator().manual_seed(0))
    t = torch.full((len(noise),), diffusion.timesteps - 1, device=noise.device)

    def run():
        return solve(
            diffusion, build_scheduler(kind, diffusion.config), steps, noise, torch.Generator().manual_seed(0)
        )

    def floor():
        with torch.inference_mode():
            for _ in range(evaluations):
                diffusion.model(noise, t)

    return Case(kind, run, warm_up=True), Case(f"{kind}_floor", floor), evaluations


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median reported)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--checkpoint", type=Path, default=REPO / "best_model.pt", help="anything load_model reads"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(usable_cores())
    keep_freed_memory()
    device = resolve_device(args.device)
    diffusion, weights = our_diffusion(full_sizes(), args.checkpoint, device)
    shape = (args.batch, *diffusion.sample_shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    cases, evaluations = {}, {}
    for kind in SOLVERS:
        run, floor, evaluations[kind] = solver_cases(diffusion, kind, args.steps, noise)
        cases[kind] = (run, floor)
    timings = round_robin([case for pair in cases.values() for case in pair], args.reps, device)
    rows = []
    for kind, (run, floor) in cases.items():
        seconds, floor_seconds = timings.median(run), timings.median(floor)
        rows.append(
            {
                "solver": kind,
                "nfe": evaluations[kind],
                "seconds": seconds,
                "floor_seconds": floor_seconds,
                "ratio_to_floor": seconds / floor_seconds,
            }
        )
    report = {
        "weights": weights,
        "device": str(device),
        "steps": args.steps,
        "batch": args.batch,
        "rows": rows,
    }
    print(json.dumps(report, indent=1))
    print("\n| solver | NFE | seconds | its forwards alone | ratio |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['solver']} | {row['nfe']} | {row['seconds']:.2f} | {row['floor_seconds']:.2f} | "
              f"{row['ratio_to_floor']:.3f} |")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
