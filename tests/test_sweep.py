"""A sweep (config `models`): per-model outputs under results/<model>/, and their comparison.

One real snakemake run of the tiny config with two models: `given`, a checkpoint file made here
(used as given, never written), and `small`, trained with its own model and train overrides. Then
dry runs that show each model's work as separate, independent jobs, and schema rejections.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from diffusion_diagnostics.checkpoint import load_checkpoint, save_checkpoint
from diffusion_diagnostics.unet import UNet

from conftest import GPU_RULES, planned_jobs, run_snakemake, tiny_config

pytestmark = pytest.mark.workflow

MODELS = ("given", "small")
PER_MODEL_OUTPUTS = [
    "timestep_loss.csv",
    "timestep_loss.png",
    "interp.png",
    "interp_ddim.png",
    "interp_real.png",
    "quality/sample_quality.csv",
    "quality/interpolation_metrics.csv",
    "quality/ddim_fidelity.csv",
    "noise/ddpm_endpoints.pt",
    "noise/ddim_endpoints.pt",
    "model.json",
]
COMPARE_CSV = "results/compare/timestep_loss.csv"
COMPARE_PNG = "results/compare/timestep_loss.png"
# Once per model; train only for a model without a checkpoint, the classifier once for all.
PER_MODEL_RULES = (GPU_RULES - {"train", "train_classifier", "interpolation_samples"}) | {
    "describe_model",
    "plot_timestep_loss",
    "plot_timestep_loss_snr",
    "interpolation_grid_ddpm",
    "interpolation_grid_ddim",
    "interpolation_metrics",
}
# Grids decoded per model: the tiny config's metric variants and the DDIM picture's grid.
GRIDS_PER_MODEL = 4
# Overrides merged over the tiny config's model and train settings for the trained model.
SMALL_OVERRIDES = {"model": {"base_channels": 4}, "train": {"seed": 1, "steps": 3}}


def sweep_config(workdir) -> dict:
    """The tiny config with two models; writes the `given` model's checkpoint into ``workdir``."""
    config = tiny_config()
    torch.manual_seed(0)
    given = workdir / "given_model.pt"
    save_checkpoint(given, UNet(**config["model"]), config["diffusion"])
    config["models"] = {"given": {"checkpoint": str(given)}, "small": SMALL_OVERRIDES}
    return config


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass
class PlannedJob:
    rule: str
    model: str | None
    inputs: list[str]
    outputs: list[str]
    block: str


def dry_run_jobs(dry_run_output: str) -> list[PlannedJob]:
    """The jobs of ``snakemake -n --verbose``, from their blocks."""

    def files(block: str, kind: str) -> list[str]:
        listed = re.search(rf"^\s+{kind}: (.*)$", block, re.MULTILINE)
        return listed.group(1).split(", ") if listed else []

    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule )", dry_run_output):
        header = re.match(r"(?:local)?rule (\w+):", block)
        if header:
            model = re.search(r"^\s+wildcards: .*\bmodel=([^,\s]+)", block, re.MULTILINE)
            jobs.append(
                PlannedJob(
                    header.group(1),
                    model.group(1) if model else None,
                    files(block, "input"),
                    files(block, "output"),
                    block,
                )
            )
    return jobs


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    config = sweep_config(workdir)
    given = workdir / "given_model.pt"
    before = (given.read_bytes(), given.stat().st_mtime_ns)
    result = run_snakemake(workdir, "--cores", "2", "--resources", "gpu=1", config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (given.read_bytes(), given.stat().st_mtime_ns) == before, "the given checkpoint was touched"
    return workdir, config


def test_sweep_writes_every_per_model_output_and_no_single_model_one(sweep_run):
    workdir, _ = sweep_run
    for model in MODELS:
        for name in PER_MODEL_OUTPUTS:
            assert (workdir / "results" / model / name).stat().st_size > 0, (model, name)
    for name in (COMPARE_CSV, COMPARE_PNG):
        assert (workdir / name).stat().st_size > 0, name
    # Only the model without a checkpoint file was trained, into its own folder.
    assert (workdir / "results/small/train/best_model.pt").is_file()
    assert not (workdir / "results/given/train").exists()
    for single in ("results/timestep_loss.csv", "results/interp.png", "results/train", "results/noise"):
        assert not (workdir / single).exists(), single
    logs = [path for path in (workdir / "logs").rglob("*.log")]
    assert {path.parent.name for path in logs} >= set(MODELS)
    for log in logs:
        assert "Traceback" not in log.read_text(), log


def test_trained_model_has_its_overrides_over_the_top_level_settings(sweep_run):
    workdir, config = sweep_run
    diffusion, training = load_checkpoint(workdir / "results/small/train/best_model.pt")
    architecture = {key: diffusion.model.config[key] for key in config["model"]}
    assert architecture == {**config["model"], **SMALL_OVERRIDES["model"]}
    assert training["config"] == {**config["train"], **SMALL_OVERRIDES["train"]}
    assert (workdir / "results/small/train/resume_state.pt").is_file()


def test_comparison_csv_is_the_per_model_csvs_with_a_model_column(sweep_run):
    workdir, config = sweep_run
    combined = read_csv(workdir / COMPARE_CSV)
    own_columns = list(read_csv(workdir / "results" / MODELS[0] / "timestep_loss.csv")[0])
    assert own_columns[:6] == ["bucket", "t_start", "t_end", "mse", "count", "std_error"]
    assert {"log_snr_start", "log_snr_end", "vb_bpd"} <= set(own_columns)
    assert list(combined[0]) == ["model", *own_columns]
    buckets = config["timestep_loss"]["buckets"]
    assert len(combined) == len(MODELS) * buckets
    for model in MODELS:
        own = read_csv(workdir / "results" / model / "timestep_loss.csv")
        assert len(own) == buckets
        assert [
            {k: v for k, v in row.items() if k != "model"} for row in combined if row["model"] == model
        ] == own
    # Two different models, measured alike: their losses differ.
    assert [row["mse"] for row in combined[:buckets]] != [row["mse"] for row in combined[buckets:]]


def test_comparison_png_and_grids_are_images(sweep_run):
    workdir, config = sweep_run
    with Image.open(workdir / COMPARE_PNG) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    settings = config["interpolation"]
    tile = 28 + 2
    for model in MODELS:
        with Image.open(workdir / "results" / model / "interp_ddim.png") as image:
            assert image.size == (settings["steps"] * tile + 2, settings["n"] * tile + 2)


def test_rerun_of_the_sweep_has_nothing_to_do(sweep_run):
    workdir, config = sweep_run
    result = run_snakemake(workdir, "--cores", "1", "-n", config=config)
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_dry_run_plans_one_job_per_model_and_rule(tmp_path):
    config = sweep_config(tmp_path)
    result = run_snakemake(tmp_path, "-n", "--verbose", config=config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert planned_jobs(output) == {
        "download_mnist": 1,
        "describe_model": 2,
        # Per model, in its sample shape, from the same seeds: models of one shape get the same noise.
        "noise_endpoints": 2 * 2,
        "train": 1,  # `given` has its checkpoint
        "timestep_loss": 2,
        "plot_timestep_loss": 2,
        "plot_timestep_loss_snr": 2,
        "interpolation_samples": 2 * GRIDS_PER_MODEL,
        "interpolation_grid_ddpm": 2,
        "interpolation_grid_ddim": 2,
        "train_classifier": 1,  # one judge for all models
        "sample_quality": 2,
        "interpolation_metrics": 2,
        "ddim_fidelity": 2,
        "interpolate_real_digits": 2,
        "compare_timestep_loss": 1,
        "all": 1,
    }
    jobs = dry_run_jobs(output)
    for job in jobs:
        if job.rule != "all":
            assert ("gpu=1" in job.block) == (job.rule in GPU_RULES), job.block
    for rule in PER_MODEL_RULES:
        assert sorted(job.model for job in jobs if job.rule == rule) == sorted(MODELS), rule
    decoded = sorted(job.model for job in jobs if job.rule == "interpolation_samples")
    assert decoded == sorted(MODELS * GRIDS_PER_MODEL)

    # No job of one model needs (directly or not) a job of another: a cluster runs them side by side.
    producer = {path: job for job in jobs for path in job.outputs}

    def upstream(job: PlannedJob) -> list[PlannedJob]:
        found, stack = [], [job]
        while stack:
            for path in stack.pop().inputs:
                if path in producer and producer[path] not in found:
                    found.append(producer[path])
                    stack.append(producer[path])
        return found

    for job in jobs:
        if job.model is not None:
            others = {other.model for other in upstream(job)} - {None, job.model}
            assert not others, (job.rule, job.model, others)
    [compare] = [job for job in jobs if job.rule == "compare_timestep_loss"]
    assert {producer[path].model for path in compare.inputs} == set(MODELS)


@pytest.mark.parametrize(
    ("models", "key"),
    [
        ({"bad/name": {}}, "models"),
        ({"compare": {}}, "models"),
        ({"a": {"epochs": 3}}, "models.a"),
        ({"a": {"train": {"lr": -1.0}}}, "models.a.train.lr"),
    ],
)
def test_bad_models_are_rejected_naming_the_key(tmp_path, models, key):
    config = tiny_config()
    config["models"] = models
    result = run_snakemake(tmp_path, "--cores", "1", config=config)
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("config error at")]
    assert len(error_lines) == 1 and f"config error at {key}:" in error_lines[0], result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()
