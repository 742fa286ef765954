"""benchmarks/benchmark.py runs end to end (tiny sizes) and writes the JSON that BENCHMARKS.md describes.

No timing is asserted: this only checks that the command works. diffusers is optional (the `bench`
extra); without it the reference row is marked skipped and everything else still runs.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import torch

from conftest import REPO

QUICK = [sys.executable, str(REPO / "benchmarks/benchmark.py"), "--quick", "--reps", "1", "--threads", "1"]
SAMPLERS = {"ddpm", "ddim_10", "ddim_5", "ddim_2"}


def test_quick_benchmark_writes_its_json(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [*QUICK, "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| DDPM grid |" in result.stdout

    report = json.loads(out.read_text())
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
    assert set(report["paired_overhead"]) == {"ddpm", "ddim"}
    for row in report["paired_overhead"].values():
        assert row["pairs"] == 3 and len(row["ratios"]) == 3 and row["median_ratio"] > 0
    assert "Paired short runs (3-step samplers" in result.stdout
    assert report["network"]["flops_per_forward"] > 0
    assert report["conv_peak"]["gflops_channels_last"] > 0
    assert set(report["ddim_accuracy"]) == {"5", "2"}
    assert {"rmse", "max_abs"} <= set(report["ddim_accuracy"]["2"])
    assert set(report["bfloat16"]) == {"ddpm", "ddim_2"}
    for row in report["bfloat16"].values():
        assert row["seconds"] > 0 and row["rmse_to_float32"] > 0
    assert "| precision: bfloat16 |" in result.stdout
    assert {"images_per_second", "floor_images_per_second", "ratio_to_floor"} <= set(report["timestep_loss"])
    assert {"images_per_second", "floor_images_per_second", "ratio_to_floor"} <= set(report["training"])
    assert all({"target", "value", "met"} <= set(target) for target in report["targets"])

    diffusers = report["diffusers"]
    if importlib.util.find_spec("diffusers") is None:
        assert diffusers["status"] == "skipped" and "not installed" in diffusers["reason"]
    else:
        assert diffusers["status"] == "ok"
        assert 0.8 <= diffusers["flops_ratio_to_ours"] <= 1.2
        assert diffusers["ddpm_seconds"] > 0


def test_the_diffusers_reference_can_be_skipped(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [*QUICK, "--no-diffusers", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["diffusers"] == {"status": "skipped", "reason": "--no-diffusers"}
    assert "skipped" in result.stdout


def test_cuda_graph_rows(tmp_path, monkeypatch, replays):
    """Where the device can capture, the grids are also timed as CUDA graphs, in both precisions,
    and compared with their eager runs. Run in-process with the CPU stand-in for the capture
    (conftest.replays), which replays the graph's form of each step eagerly: bit-equal to eager."""
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "benchmarks/benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    monkeypatch.setattr(benchmark, "can_capture", lambda device: True)
    threads = str(torch.get_num_threads())  # main() sets it process-wide: keep pytest's
    report = benchmark.main(
        [
            "--quick",
            "--reps",
            "1",
            "--threads",
            threads,
            "--no-diffusers",
            "--no-keep-freed-memory",
            "--out",
            str(tmp_path / "results.json"),
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
    assert any(target["target"].startswith("DDPM grid on the GPU") for target in report["targets"])
