"""benchmarks/benchmark.py runs end to end (tiny sizes) and writes the JSON and the tables that
BENCHMARKS.md describes.

No timing is asserted: this only checks that the command works, that every table has its rows and
every measured target a value. diffusers is optional (the `bench` extra); without it its rows are
marked skipped and everything else still runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import REPO

QUICK = [sys.executable, str(REPO / "benchmarks/benchmark.py"), "--quick", "--reps", "1", "--threads", "1"]
SAMPLERS = {"ddpm", "ddim_10", "ddim_5", "ddim_2"}
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
# The quick run's table rows, one per case (the diffusers rows are checked on their own).
ROWS = (
    "| DDPM grid | 10 |",
    "| DDIM grid, S = 2 | 2 |",
    "| per_timestep_loss (32 images) | 2 |",
    "| timestep_loss_table (32 images) | 4 |",
    "| trajectory, one checkpoint (16 images) | 6 |",
    "| training, batch 8 (2 steps) |",
    "| S = 5 |",
    "| precision: bfloat16 |",
    "| target | value | met |",
)
CPU_TARGETS = {
    "DDPM <= 1.03 x its floor (paired short runs)",
    "DDIM <= 1.03 x its floor (paired short runs)",
    "network >= 60 % of the large-conv GFLOP/s while sampling",
    "DDPM grid <= 90 s",
    "DDIM S = 2 >= 15 x faster than S = 10",
    "per_timestep_loss <= 1.1 x its floor",
    "timestep_loss_table (every column and the bound) <= 1.1 x its floor",
    "trajectory: one checkpoint (its table and DDIM samples) <= 1.05 x its forward passes",
    "training <= 1.1 x its floor",
}
DIFFUSERS_TARGETS = {
    "DDPM grid ahead of diffusers' DDPMPipeline, each on its own network",
    "diffusers folder model: our DDPM <= 1.03 x its forwards (paired short runs)",
    "diffusers folder model: our DDIM <= 1.03 x its forwards (paired short runs)",
    "diffusers folder model: our DDPM faster than DDPMPipeline (speed-up)",
    "diffusers folder model: our DDIM S = 2 faster than DDIMPipeline (speed-up)",
    "diffusers folder model: our DDPM step's own cost below DDPMPipeline's (pipeline / ours)",
    "diffusers folder model: our DDIM step's own cost below DDIMPipeline's (pipeline / ours)",
}


def run_quick(tmp_path, *options: str) -> tuple[dict, str]:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [*QUICK, *options, "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text()), result.stdout


def assert_targets_measured(report: dict, expected: set[str]) -> None:
    assert {target["target"] for target in report["targets"]} == expected
    for target in report["targets"]:
        assert math.isfinite(target["value"]) and isinstance(target["met"], bool)


def test_quick_benchmark_writes_its_json_and_tables(tmp_path):
    report, stdout = run_quick(tmp_path)
    for row in ROWS:
        assert row in stdout
    assert "Paired short runs (3-step samplers" in stdout
    assert report["markdown"] == stdout.rstrip("\n")

    assert report["mode"] == "quick"
    assert {"cpu", "cores", "torch", "device", "torch_threads"} <= set(report["machine"])
    assert set(report["samplers"]) == SAMPLERS
    for row in report["samplers"].values():
        assert {
            "forwards",
            "seconds",
            "floor_seconds",
            "ratio_to_floor",
            "network_gflops_while_sampling",
        } <= set(row)
        assert row["seconds"] > 0 and row["floor_seconds"] > 0
    assert set(report["floors"]) == {"floor_10", "floor_5", "floor_2"}
    assert set(report["paired_overhead"]) == {"ddpm", "ddim"}
    for row in report["paired_overhead"].values():
        assert row["pairs"] == 3 and len(row["ratios"]) == 3 and row["median_ratio"] > 0
    assert report["network"]["flops_per_forward"] > 0
    assert report["conv_peak"]["gflops_channels_last"] > 0
    assert set(report["ddim_accuracy"]) == {"5", "2"}
    assert {"rmse", "max_abs", "speedup_vs_reference"} <= set(report["ddim_accuracy"]["2"])
    assert set(report["bfloat16"]) == {"ddpm", "ddim_2"}
    for row in report["bfloat16"].values():
        assert row["seconds"] > 0 and row["rmse_to_float32"] > 0
    assert report["cuda_graphs"] == {}
    # The loss analyses are read against the forward passes each makes: the table's include t = 0.
    loss = report["loss_analysis"]
    assert loss["per_timestep_loss"]["forwards"] == 2 and loss["timestep_loss_table"]["forwards"] == 4
    for row in [*loss.values(), report["training"]]:
        assert {"images_per_second", "floor_images_per_second", "ratio_to_floor"} <= set(row)
    assert_targets_measured(report, CPU_TARGETS | (DIFFUSERS_TARGETS if HAS_DIFFUSERS else set()))

    diffusers = report["diffusers"]
    if not HAS_DIFFUSERS:
        assert diffusers["status"] == "skipped" and "not installed" in diffusers["reason"]
        return
    assert diffusers["status"] == "ok"
    assert 0.8 <= diffusers["flops_ratio_to_ours"] <= 1.2
    assert "read by load_model (pipeline layout" in diffusers["folder_model"]
    assert {row["forwards"] for row in diffusers["pipelines"].values()} == {10, 2}
    for row in diffusers["ours_on_folder_model"].values():
        assert row["seconds"] > 0 and row["pipeline_seconds"] > 0
        # The same x_T as the pipeline drew, and (DDPM) the same step noise: the same images.
        assert row["x_T_max_abs_to_pipeline"] == 0
        assert row["max_abs_to_pipeline"] < 1e-4
    for row in (
        "| diffusers DDPMPipeline | 10 |",
        "| diffusers DDIMPipeline, S = 2 | 2 |",
        "| ours, DDPM | 10 |",
    ):
        assert row in stdout
    assert "Paired short runs on the diffusers folder model (3-step samplers" in stdout
    # The own-cost rows: the same samplers around a network that costs nothing, both sides timed.
    own_cost = diffusers["own_cost"]
    assert {row["steps"] for row in own_cost.values()} == {10, 2}
    for row in own_cost.values():
        assert row["ours_us_per_step"] > 0 and row["pipeline_us_per_step"] > 0 and row["pairs"] == 3
    assert "| our DDPM vs DDPMPipeline | 10 |" in stdout
    assert "| our DDIM vs DDIMPipeline, S = 2 | 2 |" in stdout


@pytest.fixture
def benchmark(monkeypatch):
    """benchmarks/benchmark.py as a module, its sibling modules importable as when run as a script."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("benchmark")


def test_cuda_graph_rows_and_the_diffusers_rows_skipped(tmp_path, monkeypatch, replays, benchmark):
    """Where the device can capture, the grids are also timed as CUDA graphs, in both precisions,
    and compared with their eager runs. Run in-process with the CPU stand-in for the capture
    (conftest.replays), which replays the graph's form of each step eagerly: bit-equal to eager.
    The same run leaves diffusers' rows out (--no-diffusers): they are marked skipped, every other
    target still measured."""
    monkeypatch.setattr(importlib.import_module("bench_cases"), "can_capture", lambda device: True)
    threads = str(torch.get_num_threads())  # main() sets it process-wide: keep pytest's
    report = benchmark.main(
        [
            *("--quick", "--reps", "1", "--threads", threads),
            *("--no-diffusers", "--no-keep-freed-memory", "--out", str(tmp_path / "results.json")),
        ]
    )
    assert set(report["cuda_graphs"]) == {
        "ddpm_graph",
        "ddpm_bf16_graph",
        "ddim_2_graph",
        "ddim_2_bf16_graph",
    }
    assert len(replays) >= 4
    for row in report["cuda_graphs"].values():
        assert row["seconds"] > 0 and row["rmse_to_eager"] == 0 and row["max_abs_to_eager"] == 0
    assert report["cuda_graphs"]["ddpm_bf16_graph"]["precision"] == "bfloat16"
    assert "| DDIM grid, S = 2 | bfloat16 |" in report["markdown"]
    assert report["diffusers"] == {"status": "skipped", "reason": "--no-diffusers"}
    assert "| diffusers pipelines | | skipped: --no-diffusers |" in report["markdown"]
    assert "diffusers folder model: skipped: --no-diffusers" in report["markdown"]
    assert_targets_measured(report, CPU_TARGETS | {"DDPM grid on the GPU, CUDA graph: seconds (<= 10 s)"})


def test_the_codebases_benchmark_times_every_sampler_on_both_networks(tmp_path):
    """benchmarks/bench_codebases.py at its smallest: a row per network and sampler, each a ratio of
    two measured times, and the config check's seconds."""
    script = REPO / "benchmarks/bench_codebases.py"
    command = [sys.executable, str(script), "--pairs", "1", "--steps", "2", "--batch", "2", "--reps", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout[result.stdout.index("{") : result.stdout.index("\n| network")])
    rows = {(row["model"], row["sampler"]): row for row in report["rows"]}
    samplers = {"ddpm": 50, "ddim": 2, "dpmsolver++2m": 2}
    assert set(rows) == {
        (model, sampler) for model in ("lucidrains", "guided-diffusion") for sampler in samplers
    }
    for (_, sampler), row in rows.items():
        assert row["nfe"] == samplers[sampler] and 0 < row["median_ratio"] < 10
    assert "learned_range" in report["models"]["guided-diffusion"]
    assert 0 < report["config_check"]["median_seconds"] < 60
