"""The quality rules inside the real workflow: the tiny run's tables, pictures and report."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from PIL import Image

from diffusion_diagnostics.grids import load_grid_images

from conftest import planned_jobs, run_snakemake, tiny_config

pytestmark = pytest.mark.workflow

TILE = 28 + 2  # torchvision's make_grid pads each tile by 2 pixels


def rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_classifier_summary_reports_held_out_accuracy(tiny_run):
    summary = json.loads((tiny_run / "results/classifier/summary.json").read_text())
    assert summary["heldout_size"] == 10 * tiny_config()["data"]["heldout_per_class"]
    # The tiny config's few steps already beat chance by far; the default budget reaches 99 %.
    assert 0.5 < summary["heldout_accuracy"] <= 1


def test_sample_quality_table_has_floor_samples_and_ceiling(tiny_run):
    settings = tiny_config()["quality"]
    table = {row["set"]: row for row in rows(tiny_run / "results/quality/sample_quality.csv")}
    assert list(table) == ["samples", "real train (floor)", "uniform noise (ceiling)", "real held-out"]
    assert int(table["samples"]["n"]) == settings["num_samples"]
    assert int(table["real held-out"]["n"]) == 10 * tiny_config()["data"]["heldout_per_class"]
    floor = float(table["real train (floor)"]["frechet_distance"])
    ceiling = float(table["uniform noise (ceiling)"]["frechet_distance"])
    assert 0 <= floor < ceiling
    for row in table.values():
        assert sum(int(row[f"class_{k}"]) for k in range(10)) == int(row["n"])
        assert 0 <= float(row["confident_share"]) <= 1
    saved = json.loads((tiny_run / "results/quality/sample_quality.json").read_text())
    assert saved["num_samples"] == settings["num_samples"] and saved["ddim_steps"] == settings["ddim_steps"]
    with Image.open(tiny_run / "results/quality/samples.png") as image:
        # 12 samples, 10 per row: two rows of tiles.
        assert image.size == (10 * TILE + 2, 2 * TILE + 2)


def test_interpolation_metrics_cover_every_variant_and_row(tiny_run):
    config = tiny_config()
    table = rows(tiny_run / "results/quality/interpolation_metrics.csv")
    variants = config["quality"]["interpolation_variants"]
    assert [row["variant"] for row in table] == [
        v for v in variants for _ in range(config["interpolation"]["n"])
    ]
    steps = config["interpolation"]["steps"]
    for row in table:
        assert float(row["max_step"]) >= float(row["mean_step"]) >= 0
        assert 0 <= int(row["label_changes"]) <= steps - 1
        assert 0 <= float(row["on_manifold_rate"]) <= 1


def test_ddim_fidelity_reference_is_exact_and_inversion_covers_each_step_count(tiny_run):
    settings = tiny_config()["fidelity"]
    steps = sorted(settings["num_steps"])
    sweep = rows(tiny_run / "results/quality/ddim_fidelity.csv")
    # Every step count decoded twice from the same noise: x̂0 unclipped, then clipped.
    assert [(int(row["num_steps"]), row["clip_x0"]) for row in sweep] == [
        *((s, "False") for s in steps),
        *((s, "True") for s in steps),
    ]
    by_clipping = {clip: [row for row in sweep if row["clip_x0"] == clip] for clip in ("False", "True")}
    for clipped in by_clipping.values():
        # The reference is the same clipping at the most steps: exactly itself.
        assert float(clipped[-1]["rmse_to_reference"]) == 0
    # The unclipped reference against itself is 0; the clipped one departs from it.
    assert float(by_clipping["False"][-1]["rmse_to_unclipped"]) == 0
    assert float(by_clipping["True"][-1]["rmse_to_unclipped"]) > 0
    assert all(float(row["seconds"]) > 0 for row in sweep)
    inversion = rows(tiny_run / "results/quality/ddim_inversion.csv")
    assert sorted({int(row["num_steps"]) for row in inversion}) == steps
    assert {row["clip_x0"] for row in inversion} == {"False", "True"}
    assert {int(row["images"]) for row in inversion} == {settings["inversion_images"]}


def test_real_digit_grid_has_a_row_per_pair_and_the_real_digits_at_both_ends(tiny_run):
    config = tiny_config()
    with Image.open(tiny_run / "results/interp_real.png") as image:
        pairs = len(config["real_interpolation"]["pairs"])
        assert image.size == ((config["interpolation"]["steps"] + 2) * TILE + 2, pairs * TILE + 2)


def test_report_holds_every_category_and_figure(tiny_run, tmp_path):
    report = tmp_path / "report.html"
    result = run_snakemake(tiny_run, "--report", str(report))
    assert result.returncode == 0, result.stderr
    html = report.read_text()
    for needle in (
        "Loss",
        "Interpolation",
        "Quality",
        "Training",
        "interp_real.png",
        "sample_quality.png",
        "interpolation_metrics.png",
        "ddim_fidelity.png",
        "timestep_loss.png",
    ):
        assert needle in html, needle
    assert "forward passes ran in" not in html


def test_bfloat16_precision_reruns_exactly_the_sampling_rules(tiny_run, tmp_path):
    """precision is a parameter of the rules that sample (the trajectory's samples too): switching it
    reruns those (and what renders or scores their output), never training, the loss analysis or
    the judge."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    config = {**tiny_config(), "precision": "bfloat16"}
    plan = run_snakemake(run, "-n", config=config)
    assert plan.returncode == 0, plan.stderr
    jobs = planned_jobs(plan.stdout)
    # One grid per scored variant, and the two pictured grids (the configured method).
    method = tiny_config()["interpolation"]["method"]
    grids = {*tiny_config()["quality"]["interpolation_variants"]}
    grids |= {f"{sampler}-{method}-independent" for sampler in ("ddpm", "ddim")}
    assert jobs.pop("interpolation_samples") == len(grids)
    assert set(jobs) == {
        "all",
        "trajectory_part",
        "trajectory",
        "sample_quality",
        "ddim_fidelity",
        "interpolate_real_digits",
        "interpolation_grid_ddpm",
        "interpolation_grid_ddim",
        "interpolation_metrics",
    }

    grid = "results/interpolation/ddim-lerp-independent.pt"
    float32_grid = load_grid_images(run / grid)
    result = run_snakemake(run, "--cores", "2", "results/quality/sample_quality.json", grid, config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = json.loads((run / "results/quality/sample_quality.json").read_text())
    assert saved["sampling"]["precision"] == "bfloat16"
    assert "forward passes in bfloat16" in (run / "logs/sample_quality.log").read_text()
    bf16_grid = load_grid_images(run / grid)
    assert bf16_grid.dtype == float32_grid.dtype and bf16_grid.shape == float32_grid.shape
    assert not torch.equal(bf16_grid, float32_grid)
    # The report's captions say which precision made the pictures (float32 says nothing).
    report = tmp_path / "report.html"
    built = run_snakemake(run, "--report", str(report), config=config)
    assert built.returncode == 0, built.stderr
    assert "forward passes ran in bfloat16" in report.read_text()


def test_the_sampler_table_is_its_own_target(tiny_run, tmp_path):
    """Not in the default target; run on its own (`snakemake samplers`), it reuses the run's judge
    and model: the floor, then every sampler at every step count a row, its evaluations counted,
    its scores means over the seeds with their spread; the grid, and one recommendation."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    config = tiny_config()
    settings = config["samplers"]
    plan = run_snakemake(run, "-n", "samplers", config=config)
    assert plan.returncode == 0, plan.stderr
    assert set(planned_jobs(plan.stdout)) == {"sampler_table", "samplers"}
    result = run_snakemake(run, "--cores", "2", "samplers", config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(run / "results/samplers/samplers.csv", newline="") as handle:
        floor, *rows = list(csv.DictReader(handle))
    assert floor["sampler"] == "floor (training digits)" and float(floor["frechet_distance_spread"]) > 0
    evaluations = {"ddim": lambda s: s, "euler": lambda s: s, "heun": lambda s: 2 * s - 1}
    assert [(r["sampler"], int(r["steps"]), int(r["nfe"]), int(r["seeds"])) for r in rows] == [
        (sampler, steps, evaluations[sampler](steps), settings["seeds"])
        for sampler in settings["samplers"]
        for steps in settings["steps"]
    ]
    assert all(float(r["frechet_distance"]) > 0 and float(r["ode_rmse"]) >= 0 for r in rows)
    assert all(float(r["frechet_distance_spread"]) > 0 for r in rows)
    recommendation = json.loads((run / "results/samplers/samplers.json").read_text())["recommendation"]
    chosen = next(
        r for r in rows if (r["sampler"], int(r["nfe"])) == (recommendation["sampler"], recommendation["nfe"])
    )
    best = min(float(r["frechet_distance"]) for r in rows)
    assert float(chosen["frechet_distance"]) <= best + recommendation["noise"]
    assert recommendation["sentence"] in (run / "logs/sampler_table.log").read_text()
    with Image.open(run / "results/samplers/samplers.png") as image:
        assert image.size[0] > image.size[1] > 100
    with Image.open(run / "results/samplers/grid.png") as image:  # a row per cell, eight noises
        assert image.size[1] > 100
