"""Determinism and kill-safety of the real workflow (snakemake subprocesses, tiny config)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time

import pytest
import yaml

from conftest import OUTPUTS, REPO, SNAKEMAKE, run_snakemake, tiny_config

pytestmark = pytest.mark.workflow

# Wall times differ run to run: these files are compared without their `seconds` column.
TIMED = ["results/quality/ddim_fidelity.csv", "results/quality/ddim_inversion.csv"]
# ... and this one plots them.
COMPARED = [
    name
    for name in [*OUTPUTS, "results/train/best_model.pt"]
    if name not in TIMED + ["results/quality/ddim_fidelity.png"]
]


def _untimed(path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_two_runs_from_scratch_give_byte_identical_outputs(tiny_run, tmp_path):
    result = run_snakemake(tmp_path, "--cores", "2", "--resources", "gpu=1")
    assert result.returncode == 0, result.stderr
    for name in COMPARED:
        assert (tmp_path / name).read_bytes() == (tiny_run / name).read_bytes(), name
    for name in TIMED:
        assert _untimed(tmp_path / name) == _untimed(tiny_run / name), name


def test_ddim_grid_does_not_depend_on_the_batch_size(tiny_run, tmp_path):
    config = tiny_config()
    config["interpolation"]["batch_size"] = 6  # the whole grid at once; tiny_run used 4
    for name in ("resources/mnist", "results/train", "results/noise"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(tiny_run / name), str(tmp_path / name)], check=True)
    result = run_snakemake(tmp_path, "--cores", "1", "results/interp_ddim.png", config=config)
    assert result.returncode == 0, result.stderr
    assert "interpolation_grid_ddim" in result.stdout + result.stderr  # it really ran again
    assert (tmp_path / "results/interp_ddim.png").read_bytes() == (
        tiny_run / "results/interp_ddim.png"
    ).read_bytes()


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
