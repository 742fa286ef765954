"""Determinism, a given checkpoint used as given, and kill-safety of the real workflow (snakemake
subprocesses, tiny config)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time

import pytest
import torch
import yaml

from diffusion_diagnostics.grids import load_grid_images

from conftest import OUTPUTS, REPO, SNAKEMAKE, planned_jobs, run_snakemake, tiny_config

pytestmark = pytest.mark.workflow

# Wall times differ run to run: these files are compared without their `seconds` column.
TIMED = ["results/quality/ddim_fidelity.csv", "results/quality/ddim_inversion.csv"]
# ... and this one plots them.
PLOTS_TIMES = "results/quality/ddim_fidelity.png"
# The JSON keys that name the model by where it was read (the trained file or the given copy).
NAMES_THE_MODEL = {
    "results/model.json": {"description", "checkpoint", "path"},
    "results/nll.json": {"model"},
    "results/quality/sample_quality.json": {"model"},
}


def _untimed(path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _without(path, keys: set[str]) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in keys}


def test_a_given_checkpoint_is_used_as_given_and_reproduces_the_run_that_trained_it(tiny_run, tmp_path):
    """The model tiny_run trained, given as a user's file to a run from scratch in another folder
    (its own data, its own judge): nothing is trained, every output equals tiny_run's byte for
    byte (but wall times and where the model was read from), the file is never written, neither by
    data newer than it nor by --delete-all-output."""
    config = tiny_config()
    user_model = tmp_path / "my_model.pt"
    user_model.write_bytes((tiny_run / "results/train/best_model.pt").read_bytes())
    before = (user_model.read_bytes(), user_model.stat().st_mtime_ns)
    config["checkpoint"] = str(user_model)

    first = run_snakemake(tmp_path, "--cores", "2", "--resources", "gpu=1", config=config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert not (tmp_path / "results/train").exists()
    for name in OUTPUTS:
        if name in TIMED:
            assert _untimed(tmp_path / name) == _untimed(tiny_run / name), name
        elif name in NAMES_THE_MODEL:
            keys = NAMES_THE_MODEL[name]
            assert _without(tmp_path / name, keys) == _without(tiny_run / name, keys), name
        elif name != PLOTS_TIMES:
            assert (tmp_path / name).read_bytes() == (tiny_run / name).read_bytes(), name

    # Data newer than the checkpoint: a make-like tool would want to rebuild the model.
    for split in ("train.pt", "validation.pt", "heldout.pt", "manifest.json"):
        os.utime(tmp_path / "resources/mnist" / split)
    plan = run_snakemake(tmp_path, "-n", config=config)
    assert plan.returncode == 0, plan.stderr
    planned = planned_jobs(plan.stdout + plan.stderr)
    # Snakemake compares small inputs by checksum, so the large training split is the one touched
    # file it takes for new: the judge is retrained on it, the model is not.
    assert "train_classifier" in planned and "train" not in planned, planned

    deleted = run_snakemake(tmp_path, "--cores", "1", "--delete-all-output", config=config)
    assert deleted.returncode == 0, deleted.stderr
    assert not (tmp_path / "results/interp.png").exists()
    assert (user_model.read_bytes(), user_model.stat().st_mtime_ns) == before


def test_ddim_grid_does_not_depend_on_the_batch_size(tiny_run, tmp_path):
    """interpolation.batch_size reruns the grid, which decodes the same images: to float rounding,
    since CPU kernels are chosen by batch size (see test_interpolation's in-process test)."""
    config = tiny_config()
    config["interpolation"]["batch_size"] = 6  # the whole grid at once; tiny_run used 4
    for name in ("resources/mnist", "results/train", "results/noise"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(tiny_run / name), str(tmp_path / name)], check=True)
    result = run_snakemake(tmp_path, "--cores", "1", "results/interp_ddim.png", config=config)
    assert result.returncode == 0, result.stderr
    assert "interpolation_grid_ddim" in result.stdout + result.stderr  # it really ran again
    grid = "results/interpolation/ddim-lerp-independent.pt"
    torch.testing.assert_close(
        load_grid_images(tmp_path / grid), load_grid_images(tiny_run / grid), rtol=0, atol=1e-5
    )


def test_a_run_killed_during_a_grid_leaves_no_output_and_resumes(tmp_path):
    config = tiny_config()
    # Slow enough to be caught in the middle: 6 images one at a time through 400 steps.
    config["diffusion"]["timesteps"] = 400
    config["interpolation"]["batch_size"] = 1
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = [
        SNAKEMAKE,
        "-s",
        str(REPO / "workflow" / "Snakefile"),
        "-d",
        str(tmp_path),
        "--configfile",
        str(config_file),
    ]
    run = subprocess.Popen(
        [*command, "--cores", "1", "results/interp.png"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes the job with it
    )
    log = tmp_path / "logs/interpolation_samples/ddpm-lerp-independent.log"
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:
        if log.exists() and "DDPM batch 2/6" in log.read_text():
            break
        time.sleep(0.05)
    assert run.poll() is None, "the grid finished before it could be killed"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()

    assert not (tmp_path / "results/interp.png").exists()
    assert not (tmp_path / "results/interpolation/ddpm-lerp-independent.pt").exists()
    assert not list((tmp_path / "results").rglob(".*partial*"))
    subprocess.run([*command, "--unlock"], check=True, capture_output=True)
    again = subprocess.run(
        [*command, "--cores", "1", "--rerun-incomplete", "results/interp.png"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "results/interp.png").stat().st_size > 0
    assert "rule train:" not in again.stdout + again.stderr  # finished work was not redone
