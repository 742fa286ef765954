"""Each diffusers solver on our model against the network evaluations it makes, alone: what the
solver's own arithmetic (its step, scale_model_input, the counting) adds to a cell of the sampler
table.

    python benchmarks/bench_solvers.py --reps 3
"""

from __future__ import annotations

import json

import torch
from bench_cases import one_row_model, one_row_parser
from bench_timing import Case, round_robin

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
    parser = one_row_parser(__doc__.splitlines()[0], reps=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    diffusion, weights, device = one_row_model(args)
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
