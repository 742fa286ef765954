"""Each solver's empirical order of convergence, measured against a closed form: on Gaussian data with
the exact ε (the stand-in network the tests use, tests/doubles.py), the probability-flow ODE takes
each starting noise to a point known exactly from the first noise level the solver visits. Every
solver of the sampler table, at every spacing it has, is run at several numbers of steps from the
same noises; the table gives its RMSE to that point at the first, middle and last NFE and the
least-squares slope of log error against log NFE over all of them (its empirical order). An
accuracy table, not a timing: it runs in a minute.

    python benchmarks/solver_orders.py [--steps 20 28 40 57 80 113 160]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the closed form the tests use

from diffusion_diagnostics import DiffusionProcess  # noqa: E402
from diffusion_diagnostics.errors import DiagnosticsError  # noqa: E402
from diffusion_diagnostics.sampler_table import empirical_order  # noqa: E402
from diffusion_diagnostics.solvers import SIGMA_SPACINGS, SOLVERS, build_scheduler, solve  # noqa: E402

from doubles import ContinuousGaussianEps, gaussian_alpha_bars, ode_solution  # noqa: E402

DETERMINISTIC = [kind for kind in SOLVERS if kind not in ("euler_ancestral",)]


def errors_at(diffusion, kind: str, spacing: str, steps: list[int], noise: torch.Tensor) -> list[tuple]:
    """(NFE, RMSE to the ODE's closed-form answer) at each number of steps."""
    # DPM-Solver's last step to σ = 0 (its default stops at the last timestep's σ, a biased end).
    final = {"final_sigmas_type": "zero"} if kind.startswith("dpmsolver") else {}
    points = []
    for count in steps:
        scheduler = build_scheduler(kind, diffusion.config, spacing, clip=False, **final)
        x, nfe = solve(diffusion, scheduler, count, noise)
        exact = ode_solution(noise, _first_sigma(scheduler))
        points.append((nfe, float((x.double() - exact).pow(2).mean().sqrt())))
    return points


def _first_sigma(scheduler) -> float:
    """The first noise level the scheduler visits: its first σ, or for a scheduler without σs
    (PNDM) √((1 - ᾱ) / ᾱ) at its first timestep."""
    if getattr(scheduler, "sigmas", None) is not None:
        return float(scheduler.sigmas[0])
    alpha_bar = float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])])
    return math.sqrt((1 - alpha_bar) / alpha_bar)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 28, 40, 57, 80, 113, 160])
    arguments = parser.parse_args()
    network = ContinuousGaussianEps(gaussian_alpha_bars())
    diffusion = DiffusionProcess(network, 1000, 1e-4, 0.02, clip_sample=False, sample_shape=(1, 4, 4))
    noise = torch.randn((64, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    print("| solver | spacing | NFE (first, middle, last) | RMSE to the ODE's answer | order (fitted) |")
    print("| --- | --- | --- | --- | --- |")
    for kind in DETERMINISTIC:
        for spacing in ("trailing", "leading", "linspace", *SIGMA_SPACINGS):
            try:
                points = errors_at(diffusion, kind, spacing, arguments.steps, noise)
            except DiagnosticsError:
                continue  # a spacing the solver does not have
            shown = [points[0], points[len(points) // 2], points[-1]]
            nfe = ", ".join(str(n) for n, _ in shown)
            errors = ", ".join(f"{e:.2e}" for _, e in shown)
            print(f"| {kind} | {spacing} | {nfe} | {errors} | {empirical_order(points):.2f} |")


if __name__ == "__main__":
    main()
