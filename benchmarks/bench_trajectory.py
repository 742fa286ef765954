"""One checkpoint of a trajectory against the forward passes it makes, alone: the benchmark's
trajectory row without the hours the whole benchmark takes on a CPU.

    python benchmarks/bench_trajectory.py --reps 9
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_cases import our_diffusion, trajectory_analysis
from bench_sizes import REPO, full_sizes, with_network_of
from bench_timing import round_robin, usable_cores

from diffusion_diagnostics.runtime import keep_freed_memory, resolve_device


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median reported)")
    parser.add_argument(
        "--checkpoint", type=Path, default=REPO / "best_model.pt", help="anything load_model reads"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(usable_cores())
    keep_freed_memory()
    device = resolve_device(args.device)
    diffusion, weights = our_diffusion(full_sizes(), args.checkpoint, device)
    analysis = trajectory_analysis(diffusion, with_network_of(full_sizes(), diffusion.model), device)
    timings = round_robin([analysis.case, analysis.floor], args.reps, device)
    report = {
        "weights": weights,
        "device": str(device),
        **analysis.summary(timings),
        "every_rep": timings.seconds,
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
