"""How close the samplers, the loss analyses and training get to the network's own cost.

    python benchmarks/benchmark.py            # full sizes (config/config.yaml's), about an hour on 2 cores
    python benchmarks/benchmark.py --quick    # tiny sizes, seconds: checks that everything runs

Every case runs in this one process, round-robin (case A, B, C, then A, B, C again, the starting
case rotated each repetition), and the tables report the median over the repetitions. Each case is
read against a floor, the same work with everything but the network taken away (bench_cases), and
ours against diffusers' own pipelines on the same network (bench_diffusers). See BENCHMARKS.md.

The pieces: bench_sizes (what sizes), bench_timing (the cases and how they are timed),
bench_cases and bench_diffusers (the work), bench_tables (the markdown and the targets).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from bench_cases import (
    ConvPeak,
    LossAnalysis,
    Samplers,
    Training,
    conv_cases,
    loss_analyses,
    our_diffusion,
    paired_overhead,
    sampler_cases,
    training_cases,
)
from bench_diffusers import DiffusersRows, diffusers_rows
from bench_sizes import REPO, Sizes, full_sizes, quick_sizes, with_network_of
from bench_tables import evaluate_targets, markdown
from bench_timing import Case, Timings, machine, round_robin, usable_cores

from diffusion_diagnostics.runtime import keep_freed_memory, resolve_device

DEFAULT_CHECKPOINTS = ("results/train/best_model.pt", "best_model.pt")


@dataclass
class Work:
    """Everything timed in the round robin, grouped as the tables read it."""

    samplers: Samplers
    loss: list[LossAnalysis]
    training: Training
    conv: ConvPeak
    diffusers: DiffusersRows | None  # None: skipped

    def cases(self) -> list[Case]:
        return [
            *self.samplers.cases(),
            *[case for analysis in self.loss for case in (analysis.case, analysis.floor)],
            *self.training.cases(),
            *self.conv.cases(),
            *(self.diffusers.cases() if self.diffusers is not None else []),
        ]


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
        help="the model whose samplers are timed, anything load_model reads (default: "
        "results/train/best_model.pt or best_model.pt when present; random weights otherwise; "
        "--quick always uses random weights)",
    )
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers rows")
    parser.add_argument(
        "--no-keep-freed-memory",
        action="store_true",
        help="leave glibc's malloc as it is (the workflow's scripts call runtime.keep_freed_memory)",
    )
    return parser.parse_args(argv)


def default_checkpoint(args) -> Path | None:
    if args.quick:
        return None
    if args.checkpoint is not None:
        return args.checkpoint
    return next((REPO / path for path in DEFAULT_CHECKPOINTS if (REPO / path).is_file()), None)


def diffusers_or_why_not(args, sizes: Sizes, device: torch.device) -> tuple[DiffusersRows | None, str]:
    if args.no_diffusers:
        return None, "--no-diffusers"
    try:
        return diffusers_rows(sizes, device), ""
    except ImportError as error:
        return None, f"diffusers is not installed ({error}); pip install -e '.[bench]'"


def network_summary(samplers: Samplers, sampler_rows: dict, floors: dict, conv: dict, sizes: Sizes) -> dict:
    """The network's arithmetic rate alone and while DDPM samples, against the large convolution's."""
    per_forward, timesteps = samplers.flops_per_forward, sizes.timesteps
    alone = per_forward * timesteps / floors[f"floor_{timesteps}"]["seconds"] / 1e9
    while_ddpm = sampler_rows["ddpm"]["network_gflops_while_sampling"]
    peak = conv["gflops_channels_last"]
    return {
        "flops_per_forward": per_forward,
        "flops_per_image": per_forward / len(samplers.x_T),
        "batch": len(samplers.x_T),
        "gflops_in_floor": alone,
        "gflops_while_ddpm": while_ddpm,
        "fraction_of_conv_peak_in_floor": alone / peak,
        "fraction_of_conv_peak_while_ddpm": while_ddpm / peak,
    }


def build_report(args, sizes: Sizes, setting: dict, work: Work, timings: Timings, paired: dict) -> dict:
    """The JSON report; ``setting``: the machine, the weights and why diffusers was skipped, if it was."""
    samplers = work.samplers
    sampler_rows = samplers.sampler_table(timings)
    floors = samplers.floor_table(timings)
    conv = work.conv.summary(timings)
    diffusers = {"status": "skipped", "reason": setting["diffusers_skipped"]}
    if work.diffusers is not None:
        diffusers = work.diffusers.summary(
            timings,
            paired["diffusers"],
            paired["diffusers_own_cost"],
            sampler_rows,
            samplers.flops_per_forward,
        )
    report = {
        "mode": "quick" if args.quick else "full",
        "machine": setting["machine"],
        "other_processes": timings.other_processes,
        "repetitions": args.reps,
        "sizes": asdict(sizes),
        "weights": setting["weights"],
        "network": network_summary(samplers, sampler_rows, floors, conv, sizes),
        "conv_peak": conv,
        "floors": floors,
        "samplers": sampler_rows,
        "paired_overhead": paired["ours"],
        "ddim_accuracy": samplers.accuracy_table(timings),
        "bfloat16": samplers.bfloat16_table(timings),
        "cuda_graphs": samplers.cuda_graph_table(timings),
        "diffusers": diffusers,
        "loss_analysis": {analysis.function: analysis.summary(timings) for analysis in work.loss},
        "training": work.training.summary(timings),
    }
    names = {"timesteps": sizes.timesteps, "workflow_ddim_steps": sizes.workflow_ddim_steps}
    report["targets"] = evaluate_targets(report, names)
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or usable_cores())
    # As every workflow script does (workflow.run_rule): reuse freed blocks instead of page faults.
    kept = False if args.no_keep_freed_memory else keep_freed_memory()
    device = resolve_device(args.device)
    sizes = quick_sizes() if args.quick else full_sizes()
    info = {**machine(device), "keep_freed_memory": kept}
    print(f"benchmark ({'quick' if args.quick else 'full'}): {json.dumps(info)}", file=sys.stderr, flush=True)

    diffusion, weights = our_diffusion(sizes, default_checkpoint(args), device)
    sizes = with_network_of(sizes, diffusion.model)
    reference, skipped = diffusers_or_why_not(args, sizes, device)
    with tempfile.TemporaryDirectory(prefix="benchmark-train-") as workdir:
        work = Work(
            sampler_cases(diffusion, sizes, device),
            loss_analyses(diffusion, sizes, device),
            training_cases(sizes, Path(workdir), device),
            conv_cases(sizes, device),
            reference,
        )
        timings = round_robin(work.cases(), args.reps, device)
    paired = {
        "ours": paired_overhead(diffusion.model, work.samplers.x_T, sizes),
        "diffusers": reference.paired(sizes) if reference is not None else None,
        "diffusers_own_cost": reference.own_cost(sizes, device) if reference is not None else None,
    }
    setting = {"machine": info, "weights": weights, "diffusers_skipped": skipped}
    report = build_report(args, sizes, setting, work, timings, paired)
    report["markdown"] = markdown(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(report["markdown"])
    print(f"\nwrote {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
