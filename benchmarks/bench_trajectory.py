"""One checkpoint of a trajectory against the forward passes it makes, alone: the benchmark's
trajectory row without the hours the whole benchmark takes on a CPU.

    python benchmarks/bench_trajectory.py --reps 9
"""

from __future__ import annotations

import json

from bench_cases import one_row_model, one_row_parser, trajectory_analysis
from bench_sizes import full_sizes, with_network_of
from bench_timing import round_robin


def main(argv=None) -> dict:
    args = one_row_parser(__doc__.splitlines()[0], reps=5).parse_args(argv)
    diffusion, weights, device = one_row_model(args)
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
