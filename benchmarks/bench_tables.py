"""The report's markdown, one function per table, and the targets it is held to.

Every function reads the JSON report only, so the tables can be rebuilt from a saved run.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

TESTS = {"<=": operator.le, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class Target:
    """A goal from the issues: the report's value at ``path`` must pass ``test`` against ``bound``.

    ``text`` and ``path`` may name the run's sizes (``{timesteps}``, ``{workflow_ddim_steps}``). A
    target whose value the run did not measure (no diffusers, no CUDA graphs) is left out.
    """

    text: str
    path: tuple[str, ...]
    test: str
    bound: float


TARGETS = (
    Target(
        "DDPM <= 1.03 x its floor (paired short runs)",
        ("paired_overhead", "ddpm", "median_ratio"),
        "<=",
        1.03,
    ),
    Target(
        "DDIM <= 1.03 x its floor (paired short runs)",
        ("paired_overhead", "ddim", "median_ratio"),
        "<=",
        1.03,
    ),
    Target(
        "network >= 60 % of the large-conv GFLOP/s while sampling",
        ("network", "fraction_of_conv_peak_while_ddpm"),
        ">=",
        0.6,
    ),
    Target("DDPM grid <= 90 s", ("samplers", "ddpm", "seconds"), "<=", 90),
    Target(
        "DDIM S = {workflow_ddim_steps} >= 15 x faster than S = {timesteps}",
        ("ddim_accuracy", "{workflow_ddim_steps}", "speedup_vs_reference"),
        ">=",
        15,
    ),
    Target(
        "per_timestep_loss <= 1.1 x its floor",
        ("loss_analysis", "per_timestep_loss", "ratio_to_floor"),
        "<=",
        1.1,
    ),
    Target(
        "timestep_loss_table (every column and the bound) <= 1.1 x its floor",
        ("loss_analysis", "timestep_loss_table", "ratio_to_floor"),
        "<=",
        1.1,
    ),
    Target(
        "trajectory: one checkpoint (its table and DDIM samples) <= 1.05 x its forward passes",
        ("loss_analysis", "trajectory, one checkpoint", "ratio_to_floor"),
        "<=",
        1.05,
    ),
    Target("training <= 1.1 x its floor", ("training", "ratio_to_floor"), "<=", 1.1),
    Target(
        "DDPM grid ahead of diffusers' DDPMPipeline, each on its own network",
        ("diffusers", "ours_ddpm_speedup"),
        ">",
        1,
    ),
    Target(
        "diffusers folder model: our DDPM <= 1.03 x its forwards (paired short runs)",
        ("diffusers", "paired_overhead", "ddpm", "median_ratio"),
        "<=",
        1.03,
    ),
    Target(
        "diffusers folder model: our DDIM <= 1.03 x its forwards (paired short runs)",
        ("diffusers", "paired_overhead", "ddim", "median_ratio"),
        "<=",
        1.03,
    ),
    Target(
        "diffusers folder model: our DDPM faster than DDPMPipeline (speed-up)",
        ("diffusers", "ours_on_folder_model", "ddpm", "speedup_over_pipeline"),
        ">",
        1,
    ),
    Target(
        "diffusers folder model: our DDIM S = {workflow_ddim_steps} faster than DDIMPipeline (speed-up)",
        ("diffusers", "ours_on_folder_model", "ddim", "speedup_over_pipeline"),
        ">",
        1,
    ),
    Target(
        "diffusers folder model: our DDPM step's own cost below DDPMPipeline's (pipeline / ours)",
        ("diffusers", "own_cost", "ddpm", "pipeline_over_ours"),
        ">",
        1,
    ),
    Target(
        "diffusers folder model: our DDIM step's own cost below DDIMPipeline's (pipeline / ours)",
        ("diffusers", "own_cost", "ddim", "pipeline_over_ours"),
        ">",
        1,
    ),
    Target(
        "DDPM grid on the GPU, CUDA graph: seconds (<= 10 s)",
        ("cuda_graphs", "ddpm_graph", "seconds"),
        "<=",
        10,
    ),
)


def lookup(report: dict, path: tuple[str, ...]):
    value = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def evaluate_targets(report: dict, names: dict) -> list[dict]:
    """Each measured target's value and whether it is met; ``names``: what ``{…}`` in a target stands for."""
    results = []
    for target in TARGETS:
        value = lookup(report, tuple(key.format(**names) for key in target.path))
        if value is not None:
            met = TESTS[target.test](value, target.bound)
            results.append({"target": target.text.format(**names), "value": value, "met": bool(met)})
    return results


# --- the tables ----------------------------------------------------------------------------------


def machine_lines(report: dict) -> list[str]:
    m = report["machine"]
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    return [
        f"Machine: {m['cpu']} ({m['platform']}), {m['cores']} cores ({m['cores_usable']} usable), "
        f"torch {m['torch']} with {m['torch_threads']} threads, device {m['device']}{gpu}",
        f"Weights: {report['weights']}. Median of {report['repetitions']} interleaved repetitions; "
        f"glibc keeps freed memory: {'yes' if m['keep_freed_memory'] else 'no'}.",
    ]


def sampler_table(report: dict) -> list[str]:
    lines = [
        "| case | forwards | seconds | floor s | ratio to floor | network GFLOP/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["samplers"].values():
        lines.append(
            f"| {row['label']} | {row['forwards']} | {row['seconds']:.2f} | {row['floor_seconds']:.2f} | "
            f"{row['ratio_to_floor']:.3f} | {row['network_gflops_while_sampling']:.0f} |"
        )
    d = report["diffusers"]
    if d["status"] != "ok":
        return [*lines, f"| diffusers pipelines | | skipped: {d['reason']} | | | |"]
    for row in d["pipelines"].values():
        floor = (
            f"{row['floor_seconds']:.2f} | {row['ratio_to_floor']:.3f}" if "floor_seconds" in row else " | "
        )
        lines.append(
            f"| {row['label']} | {row['forwards']} | {row['seconds']:.2f} | {floor} | "
            f"{row['network_gflops']:.0f} |"
        )
    return lines


def paired_line(paired: dict, what: str) -> str:
    ddpm, ddim = paired["ddpm"], paired["ddim"]
    return (
        f"Paired short runs{what} ({ddpm['steps']}-step samplers against the same forwards alone, "
        f"back to back, {ddpm['pairs']} pairs): median ratio DDPM {ddpm['median_ratio']:.3f}, "
        f"DDIM {ddim['median_ratio']:.3f}."
    )


def work_table(report: dict) -> list[str]:
    lines = [
        "| work | forwards | images/s | floor images/s | ratio to floor |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for function, row in report["loss_analysis"].items():
        lines.append(
            f"| {function} ({row['images']} images) | {row['forwards']} | {row['images_per_second']:.0f} | "
            f"{row['floor_images_per_second']:.0f} | {row['ratio_to_floor']:.3f} |"
        )
    t = report["training"]
    lines.append(
        f"| training, batch {t['batch']} ({t['steps_timed']} steps) | {t['steps_timed']} | "
        f"{t['images_per_second']:.0f} | {t['floor_images_per_second']:.0f} | {t['ratio_to_floor']:.3f} |"
    )
    return lines


def network_lines(report: dict) -> list[str]:
    n, c, d = report["network"], report["conv_peak"], report["diffusers"]
    lines = [
        f"Network: {n['flops_per_forward'] / 1e9:.2f} GFLOP per forward at batch {n['batch']} "
        f"({n['flops_per_image'] / 1e6:.0f} MFLOP per image); {n['gflops_in_floor']:.0f} GFLOP/s alone, "
        f"{n['gflops_while_ddpm']:.0f} GFLOP/s while DDPM sampling = "
        f"{100 * n['fraction_of_conv_peak_while_ddpm']:.0f} % of the large convolution's "
        f"{c['gflops_channels_last']:.0f} GFLOP/s (channels-last; {c['gflops_contiguous']:.0f} GFLOP/s "
        f"in the default layout; batch {c['shape']['batch']}, {c['shape']['channels']} -> "
        f"{c['shape']['channels']} channels, {c['shape']['size']} x {c['shape']['size']})."
    ]
    if d["status"] == "ok":
        lines.append(
            f"diffusers {d['version']}: {d['folder_model']}, {d['flops_per_forward'] / 1e9:.2f} GFLOP per "
            f"forward ({d['flops_ratio_to_ours']:.3f} x ours). Ours, each on its own network, is "
            f"{d['ours_ddpm_speedup']:.2f} x faster than DDPMPipeline on the DDPM grid, "
            f"{d['ours_ddim_speedup']:.2f} x than DDIMPipeline on the DDIM S = {d['floor']['forwards']} grid."
        )
    return lines


def folder_table(report: dict) -> list[str]:
    """Our samplers and diffusers' pipelines on one diffusers network, from the same noise."""
    d = report["diffusers"]
    if d["status"] != "ok":
        return [f"diffusers folder model: skipped: {d['reason']}"]
    lines = [
        "| on the diffusers folder model, the pipeline's noise | forwards | seconds | pipeline s | "
        "speed-up over the pipeline | paired ratio to its forwards | pixel RMSE vs pipeline | "
        "max abs error | x_T max abs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in d["ours_on_folder_model"].values():
        lines.append(
            f"| {row['label']} | {row['forwards']} | {row['seconds']:.2f} | {row['pipeline_seconds']:.2f} | "
            f"{row['speedup_over_pipeline']:.2f} | {row['paired_ratio_to_forwards']:.3f} | "
            f"{row['rmse_to_pipeline']:.2g} | {row['max_abs_to_pipeline']:.2g} | "
            f"{row['x_T_max_abs_to_pipeline']:.2g} |"
        )
    return [
        *lines,
        "",
        paired_line(d["paired_overhead"], " on the diffusers folder model"),
        "",
        *own_cost_table(d["own_cost"]),
    ]


def own_cost_table(own_cost: dict) -> list[str]:
    """What each sampler costs besides the network: both around a UNet2DModel that returns a fixed ε̂."""
    lines = [
        "| own cost per step (the network a free stand-in) | steps | ours µs | pipeline µs | "
        "pipeline / ours (paired) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in own_cost.values():
        lines.append(
            f"| {row['label']} | {row['steps']} | {row['ours_us_per_step']:.0f} | "
            f"{row['pipeline_us_per_step']:.0f} | {row['pipeline_over_ours']:.2f} |"
        )
    return lines


def accuracy_table(report: dict) -> list[str]:
    lines = [
        "| DDIM grid vs S = max | pixel RMSE | max abs error | speed-up |",
        "| --- | ---: | ---: | ---: |",
    ]
    for steps, row in report["ddim_accuracy"].items():
        lines.append(
            f"| S = {steps} | {row['rmse']:.4f} | {row['max_abs']:.4f} | {row['speedup_vs_reference']:.1f} |"
        )
    return lines


def bfloat16_table(report: dict) -> list[str]:
    lines = [
        "| precision: bfloat16 | seconds | float32 s | speed-up | pixel RMSE vs float32 | max abs error |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["bfloat16"].values():
        lines.append(
            f"| {row['label']} | {row['seconds']:.2f} | {row['float32_seconds']:.2f} | "
            f"{row['speedup']:.2f} | {row['rmse_to_float32']:.4f} | {row['max_abs_to_float32']:.4f} |"
        )
    return lines


def cuda_graph_table(report: dict) -> list[str]:
    if not report["cuda_graphs"]:
        return [f"CUDA graphs: not timed, the device ({report['machine']['device']}) cannot capture them."]
    lines = [
        "| CUDA graph | precision | seconds | eager s | speed-up | vs float32 eager | "
        "pixel RMSE vs eager | max abs error |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["cuda_graphs"].values():
        lines.append(
            f"| {row['label']} | {row['precision']} | {row['seconds']:.2f} | {row['eager_seconds']:.2f} | "
            f"{row['speedup']:.2f} | {row['speedup_vs_float32_eager']:.2f} | {row['rmse_to_eager']:.2g} | "
            f"{row['max_abs_to_eager']:.2g} |"
        )
    return lines


def other_processes_line(report: dict) -> list[str]:
    others = report["other_processes"]
    if others is None:
        return []
    share = others["cpu_seconds"] / (others["wall_seconds"] * (report["machine"]["cores_usable"] or 1))
    suspect = "; the timings are suspect" if share > 0.05 else ""
    return [
        f"Other processes used {others['cpu_seconds']:.1f} CPU-seconds while this ran "
        f"({100 * share:.1f} % of the machine){suspect}."
    ]


def targets_table(report: dict) -> list[str]:
    lines = ["| target | value | met |", "| --- | ---: | --- |"]
    for target in report["targets"]:
        lines.append(f"| {target['target']} | {target['value']:.3f} | {'yes' if target['met'] else 'no'} |")
    if report["mode"] == "quick":
        lines = ["Quick mode: tiny sizes, the targets below are only meaningful in full mode.", "", *lines]
    return lines


def markdown(report: dict) -> str:
    sections = [
        machine_lines(report),
        sampler_table(report),
        [paired_line(report["paired_overhead"], "")],
        work_table(report),
        network_lines(report),
        folder_table(report),
        accuracy_table(report),
        bfloat16_table(report),
        cuda_graph_table(report),
        other_processes_line(report),
        targets_table(report),
    ]
    return "\n\n".join("\n".join(section) for section in sections if section)
