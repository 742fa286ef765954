"""A sweep (config `models`) of every kind of model: per-model outputs under results/<model>/, and
their comparison.

One real snakemake run of the tiny config with seven models, one of each kind `checkpoint:` reads:
`given`, this package's checkpoint file; `small`, trained with its own model and train overrides;
`folder`, a diffusers pipeline folder of another image size (32 x 32, RGB) and process; `hub`, a flat
diffusers folder served by a stand-in Hugging Face Hub on 127.0.0.1; `own`, a user's network by its
entry point; `lucid`, a file lucidrains' Trainer saved; `guided`, guided-diffusion's create_model
with a learned variance and rescaled timesteps. `folder`, the one whose shape and process differ
from the tiny config's, is taken to
every output of a single run (tiny_run takes the others' kinds there); the rest to what shows how
each was read (model.json, the loss, the noise it starts from), `small` through its training. A
user's files are used as given, never written. Then dry runs that show each model's work as
separate, independent jobs.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import threading
from dataclasses import dataclass

import own_network
import pytest
import torch
from PIL import Image

from diffusion_diagnostics.checkpoint import load_checkpoint, save_checkpoint
from diffusion_diagnostics.grids import load_endpoints
from diffusion_diagnostics.unet import UNet

from codebase_files import save_guided_diffusion_model, save_lucidrains_trainer_file
from conftest import (
    GPU_RULES,
    REPO,
    StandInHub,
    planned_jobs,
    run_snakemake,
    save_diffusers_folder,
    tiny_config,
    tree_digest,
)

pytestmark = pytest.mark.workflow

# Taken to every output; taken to what shows how they were read.
WHOLE, READ_ONLY_AS_FAR = ("folder",), ("given", "small", "hub", "own", "lucid", "guided")
MODELS = ("given", "small", "folder", "hub", "own", "lucid", "guided")
# What model.json calls each model's kind.
KINDS = {
    "given": "checkpoint",
    "small": "checkpoint",
    "folder": "diffusers",
    "hub": "diffusers",
    "own": "entry_point",
    "lucid": "entry_point",
    "guided": "entry_point",
}
HUB_REPOSITORY = "owner/flat-ddpm"
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
ENOUGH_TO_SHOW_THE_KIND = ["model.json", "timestep_loss.csv", "noise/ddim_endpoints.pt"]
COMPARE_CSV = "results/compare/timestep_loss.csv"
COMPARE_PNG = "results/compare/timestep_loss.png"
# Once per model; train only for a model without a checkpoint, the classifier once for all.
PER_MODEL_RULES = (GPU_RULES - {"train", "train_classifier", "interpolation_samples", "trajectory_part"}) | {
    "describe_model",
    "plot_timestep_loss",
    "plot_timestep_loss_snr",
    "interpolation_grid_ddpm",
    "interpolation_grid_ddim",
    "interpolation_metrics",
}
# The interpolation metrics score the DDIM picture's grid only (the tiny config's other variants
# are tiny_run's to test): two grids decoded per model, the DDPM and the DDIM picture's.
VARIANTS = ["ddim-lerp-independent"]
GRIDS_PER_MODEL = 2
# Overrides merged over the tiny config's model and train settings for the trained model.
SMALL_OVERRIDES = {"model": {"base_channels": 4}, "train": {"seed": 1, "steps": 3}}


def scheduler(**changes) -> dict:
    """The tiny config's process in diffusers' scheduler keys, with ``changes``."""
    return {"num_train_timesteps": 20, "beta_start": 1e-3, "beta_end": 0.2, **changes}


def sweep_config(workdir) -> tuple[dict, dict]:
    """The tiny config with the seven models, and the user's files it names (written into
    ``workdir``), by model."""
    config = tiny_config()
    config["quality"]["interpolation_variants"] = VARIANTS
    # Every model's sampler table (ours and a diffusers solver, one step count) and their comparison.
    config["samplers"].update(samplers=["ddim", "euler"], steps=[2], seeds=1)
    torch.manual_seed(0)
    given = workdir / "given_model.pt"
    save_checkpoint(given, UNet(**config["model"]), config["diffusion"])
    folder = save_diffusers_folder(
        workdir / "my-ddpm",
        "pipeline",
        sample_size=32,
        channels=3,  # RGB, as diffusers' train_unconditional.py trains on MNIST
        # A variance of its own (improved-diffusion's learn_sigma): 6 channels out.
        **scheduler(prediction_type="v_prediction", variance_type="learned_range", clip_sample=True),
    )
    weights = workdir / "own.pt"
    torch.save(own_network.build().state_dict(), weights)
    # lucidrains' Trainer file, as its own Trainer.save wrote it, with its Unet's arguments.
    lucid_unet = {"dim": 8, "dim_mults": [1, 2], "channels": 1, "flash_attn": False}
    _, trainer_file = save_lucidrains_trainer_file(workdir / "lucidrains", lucid_unet, 28, 20, 5)
    # guided-diffusion's create_model (RGB, 32 x 32, a learned variance), saved as its TrainLoop saves.
    # Its training scripts' defaults (use_scale_shift_norm: true) are not create_model's: the
    # kwargs say what it was built with.
    guided_unet = {"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
                   "attention_resolutions": "16", "num_heads": 1, "learn_sigma": True,
                   "use_scale_shift_norm": True}  # fmt: skip
    _, _, guided_file = save_guided_diffusion_model(workdir / "guided", guided_unet, 20)
    # Paths relative to the working directory, as a user writes them.
    config["models"] = {
        "given": {"checkpoint": given.name},
        "small": SMALL_OVERRIDES,
        "folder": {"checkpoint": folder.name},
        "hub": {"checkpoint": f"hf:{HUB_REPOSITORY}"},
        "own": {
            "checkpoint": {
                "entry_point": "own_network:build",
                "weights": weights.name,
                "sample_shape": [1, 28, 28],
                "schedule": scheduler(prediction_type="sample"),
            }
        },
        "lucid": {
            "checkpoint": {
                "entry_point": "denoising_diffusion_pytorch:Unet",
                "kwargs": lucid_unet,
                "weights": str(trainer_file.relative_to(workdir)),
                "sample_shape": [1, 28, 28],
            }
        },
        "guided": {
            "checkpoint": {
                "entry_point": "guided_diffusion.script_util:create_model",
                "kwargs": guided_unet,
                "weights": str(guided_file.relative_to(workdir)),
                "sample_shape": [3, 32, 32],
                "rescale_timesteps": True,
                "schedule": scheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range"),
            }
        },
    }
    files = {"given": given, "folder": folder, "own": weights, "lucid": trainer_file, "guided": guided_file}
    return config, files


def sweep_targets() -> list[str]:
    return [
        *(f"results/{model}/{name}" for model in WHOLE for name in PER_MODEL_OUTPUTS),
        *(f"results/{model}/{name}" for model in READ_ONLY_AS_FAR for name in ENOUGH_TO_SHOW_THE_KIND),
        COMPARE_CSV,
        COMPARE_PNG,
    ]


# Besides the files: the rule that builds every model's sampler table and their comparison.
SAMPLER_TARGET = "samplers"


@contextlib.contextmanager
def serving_the_hub_model(folder):
    """A flat diffusers folder with .bin weights, served as the Hub serves HUB_REPOSITORY, and the
    environment the jobs need: HF_ENDPOINT pointing at it, and own_network importable as the
    entry point names it."""
    served = save_diffusers_folder(folder, "flat", sample_size=28, safe=False, **scheduler())
    server = StandInHub(served, HUB_REPOSITORY)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HF_ENDPOINT", server.endpoint)
            patch.setenv("PYTHONPATH", str(REPO / "tests"))
            yield server
    finally:
        server.shutdown()
        server.server_close()


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
    config, users_files = sweep_config(workdir)
    before = {name: tree_digest(path) for name, path in users_files.items()}
    with serving_the_hub_model(tmp_path_factory.mktemp("served") / "flat-ddpm"):
        # Targets after --cores: the options before and after take several values each.
        result = run_snakemake(
            workdir,
            "--cores",
            "2",
            *sweep_targets(),
            SAMPLER_TARGET,
            "--resources",
            "gpu=1",
            config=config,
            timeout=1500,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert {name: tree_digest(path) for name, path in users_files.items()} == before, "a user's file changed"
    return workdir, config


def test_sweep_writes_every_per_model_output_and_no_single_model_one(sweep_run):
    workdir, _ = sweep_run
    for name in sweep_targets():
        assert (workdir / name).stat().st_size > 0, name
    # Only the model without a checkpoint was trained, into its own folder.
    assert (workdir / "results/small/train/best_model.pt").is_file()
    assert [model for model in MODELS if (workdir / "results" / model / "train").exists()] == ["small"]
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


def test_every_kind_of_model_is_read_as_what_it_is(sweep_run):
    workdir, config = sweep_run
    cards = {name: json.loads((workdir / "results" / name / "model.json").read_text()) for name in MODELS}
    assert {name: card["source"] for name, card in cards.items()} == KINDS
    assert cards["folder"]["sample_shape"] == [3, 32, 32] and cards["folder"]["digits"].startswith("padded")
    assert "in R, G and B alike" in cards["folder"]["digits"]
    assert cards["folder"]["process"]["prediction_type"] == "v_prediction"
    assert cards["folder"]["process"]["variance_type"] == "learned_range"
    assert (
        cards["hub"]["details"]["layout"] == "flat" and cards["hub"]["checkpoint"] == f"hf:{HUB_REPOSITORY}"
    )
    assert cards["hub"]["path"] == "resources/models/owner--flat-ddpm"
    assert (workdir / "resources/models/owner--flat-ddpm/diffusion_pytorch_model.bin").is_file()
    assert "owner--flat-ddpm" in (workdir / "logs/hub/describe_model.log").read_text()
    assert cards["own"]["process"]["prediction_type"] == "sample"
    # lucidrains' Trainer file: its EMA network, its own βs (sigmoid), its objective from loss_weight.
    assert cards["lucid"]["process"]["prediction_type"] == "v_prediction"
    assert "trained betas, T = 20" in cards["lucid"]["description"]
    assert cards["lucid"]["details"]["trainer"] == {"weights": "ema", "step": 2}
    # guided-diffusion's network: its variance half read, its timesteps checked both ways.
    assert cards["guided"]["process"]["variance_type"] == "learned_range"
    assert set(cards["guided"]["config_check"]["relative_errors"]["rescale_timesteps"]) == {"true", "false"}
    # Every model's config checked against its weights: each prediction type read, and the named
    # schedules; these untrained networks fit no reading far better than another.
    for card in cards.values():
        assert set(card["config_check"]["relative_errors"]["prediction_type"]) == {
            "epsilon", "v_prediction", "sample"
        }  # fmt: skip
        assert card["config_check"]["findings"] == []

    # Noise in each model's shape; the grids and the judge see 28 x 28 digits whatever the model.
    z0, _ = load_endpoints(workdir / "results/folder/noise/ddim_endpoints.pt")
    assert z0.shape[1:] == (3, 32, 32)
    given_z0, _ = load_endpoints(workdir / "results/given/noise/ddim_endpoints.pt")
    hub_z0, _ = load_endpoints(workdir / "results/hub/noise/ddim_endpoints.pt")
    assert torch.equal(given_z0, hub_z0), "models of one shape decode the same noise"
    for name in WHOLE:
        with open(workdir / "results" / name / "quality" / "sample_quality.csv") as handle:
            assert next(csv.DictReader(handle))["set"] == "samples"


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


def test_every_model_has_its_sampler_table_and_the_comparison_has_them_all(sweep_run):
    """RGB 32 x 32 v-prediction, an entry point predicting x_0, a Hub folder, ours: each model's
    table has the floor and a row per sampler; the comparison is the tables with a model column."""
    workdir, _ = sweep_run
    combined = read_csv(workdir / "results/compare/samplers.csv")
    for model in MODELS:
        own = read_csv(workdir / "results" / model / "samplers/samplers.csv")
        rows = [(row["sampler"], row["nfe"]) for row in own]
        assert rows == [("floor (training digits)", ""), ("ddim", "2"), ("euler", "2")]
        assert all(float(row["frechet_distance"]) > 0 for row in own)
        assert [
            {k: v for k, v in row.items() if k != "model"} for row in combined if row["model"] == model
        ] == own
    with Image.open(workdir / "results/compare/samplers.png") as image:
        assert image.size[0] > 300 * len(MODELS) // 2


def test_comparison_png_and_grids_are_images(sweep_run):
    workdir, config = sweep_run
    with Image.open(workdir / COMPARE_PNG) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    settings = config["interpolation"]
    tile = 28 + 2
    for model in WHOLE:
        with Image.open(workdir / "results" / model / "interp_ddim.png") as image:
            assert image.size == (settings["steps"] * tile + 2, settings["n"] * tile + 2)


def test_rerun_of_the_sweep_has_nothing_to_do(sweep_run):
    workdir, config = sweep_run
    result = run_snakemake(workdir, "--cores", "1", *sweep_targets(), SAMPLER_TARGET, "-n", config=config)
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_dry_run_plans_one_job_per_model_and_rule(tmp_path):
    config, _ = sweep_config(tmp_path)
    result = run_snakemake(tmp_path, "-n", "--verbose", config=config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    models = len(MODELS)
    assert planned_jobs(output) == {
        "download_mnist": 1,
        "download_model": 1,  # the hub model, once
        "describe_model": models,
        # Per model, in its sample shape, from the same seeds: models of one shape get the same noise.
        "noise_endpoints": 2 * models,
        "train": 1,  # only `small` has no checkpoint
        "timestep_loss": models,
        "plot_timestep_loss": models,
        "plot_timestep_loss_snr": models,
        "interpolation_samples": models * GRIDS_PER_MODEL,
        "interpolation_grid_ddpm": models,
        "interpolation_grid_ddim": models,
        "train_classifier": 1,  # one judge for all models
        "sample_quality": models,
        "interpolation_metrics": models,
        "ddim_fidelity": models,
        "interpolate_real_digits": models,
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
