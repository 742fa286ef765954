"""The workflow for real: snakemake subprocesses on the tiny config, outputs checked by value."""

from __future__ import annotations

import csv
import json
import os
import re

import pytest
import torch
from PIL import Image

from diffusion_diagnostics.checkpoint import load_checkpoint
from diffusion_diagnostics.trajectory import read_measured

from conftest import GPU_RULES, OUTPUTS, planned_jobs, run_snakemake, tiny_config

pytestmark = pytest.mark.workflow


def test_full_run_produces_every_output(tiny_run):
    for name in OUTPUTS + ["results/train/best_model.pt", "results/train/loss_curve.png"]:
        assert (tiny_run / name).stat().st_size > 0, name
    for log in (tiny_run / "logs").rglob("*.log"):
        assert "Traceback" not in log.read_text(), log
    benchmarks = {p.stem for p in (tiny_run / "results" / "benchmarks").glob("*.tsv")}
    assert {"download_mnist", "train", "timestep_loss", "plot_timestep_loss"} <= benchmarks


def test_loss_csv_has_one_row_per_bucket(tiny_run):
    config = tiny_config()["timestep_loss"]
    with open(tiny_run / "results/timestep_loss.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == config["buckets"]
    # The original's columns, first and unchanged.
    assert list(rows[0])[:6] == ["bucket", "t_start", "t_end", "mse", "count", "std_error"]
    timesteps = tiny_config()["diffusion"]["timesteps"]
    assert [int(r["t_start"]) for r in rows] == [i * timesteps // config["buckets"] for i in range(4)]
    assert int(rows[-1]["t_end"]) == timesteps - 1
    total = config["num_batches"] * config["batch_size"]
    assert sum(int(r["count"]) for r in rows) == total
    assert {int(r["count"]) for r in rows} == {total // config["buckets"]}  # stratified
    assert all(float(r["mse"]) > 0 and float(r["std_error"]) > 0 for r in rows)


def test_grid_pngs_have_n_by_steps_tiles(tiny_run):
    settings = tiny_config()["interpolation"]
    tile = 28 + 2  # torchvision's make_grid pads each tile by 2 pixels
    for name in ("results/interp.png", "results/interp_ddim.png"):
        with Image.open(tiny_run / name) as image:
            assert image.size == (settings["steps"] * tile + 2, settings["n"] * tile + 2)


def test_endpoints_are_seeded_and_shared_between_samplers(tiny_run):
    ddpm = torch.load(tiny_run / "results/noise/ddpm_endpoints.pt", weights_only=True)
    ddim = torch.load(tiny_run / "results/noise/ddim_endpoints.pt", weights_only=True)
    n = tiny_config()["interpolation"]["n"]
    assert ddpm["z0"].shape == ddpm["z1"].shape == (n, 1, 28, 28)
    assert torch.equal(ddpm["z0"], ddim["z0"]) and torch.equal(ddpm["z1"], ddim["z1"])
    assert not torch.equal(ddpm["z0"], ddpm["z1"])


def test_trained_checkpoint_loads_with_the_configured_architecture(tiny_run):
    diffusion, training = load_checkpoint(tiny_run / "results/train/best_model.pt")
    config = tiny_config()
    assert diffusion.model.config["base_channels"] == config["model"]["base_channels"]
    assert diffusion.timesteps == config["diffusion"]["timesteps"]
    assert training["steps"] == config["train"]["steps"]


def test_manifest_records_source_and_checksums(tiny_run):
    import json

    manifest = json.loads((tiny_run / "resources/mnist/manifest.json").read_text())
    assert manifest["source"] == "mnist-5k"
    data = tiny_config()["data"]
    held_out, validation = 10 * data["heldout_per_class"], data["validation_size"]
    assert manifest["splits"] == {
        "train": 5000 - held_out - validation,
        "validation": validation,
        "heldout": held_out,
    }
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())


def test_rerun_has_nothing_to_do(tiny_run):
    result = run_snakemake(tiny_run, "--cores", "1", "-n")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_dry_run_of_one_grid_plans_only_what_it_needs(tmp_path):
    result = run_snakemake(tmp_path, "-n", "results/interp_ddim.png")
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result.stdout + result.stderr) == {
        "download_mnist": 1,
        "train": 1,
        "describe_model": 1,
        "noise_endpoints": 1,
        "interpolation_samples": 1,
        "interpolation_grid_ddim": 1,
    }


def test_model_rules_claim_one_gpu(tmp_path):
    result = run_snakemake(tmp_path, "-n", "--printshellcmds", "--verbose")
    output = result.stdout + result.stderr
    for block in re.split(r"\n(?=(?:local)?rule )", output):
        header = re.match(r"(?:local)?rule (\w+):", block)
        if header and header.group(1) != "all":
            assert ("gpu=1" in block) == (header.group(1) in GPU_RULES), block


# --- bad input. One snakemake run per kind of failure proves the wiring (the error reaches the
# terminal as one line, nothing is left behind); the cases of each kind are checked in process:
# the config's in test_config_schema.py, the sources' in test_sources.py, the checkpoint files'
# in test_checkpoint.py.


def the_error_line(output: str, prefix: str) -> str:
    """The one line of a run's output that starts with ``prefix``."""
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, output
    return lines[0]


def assert_nothing_made(workdir) -> None:
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


def test_a_bad_config_stops_the_run_before_anything_runs(tmp_path):
    config = tiny_config()
    config["interpolation"] = {**config["interpolation"], "n": "eight"}
    result = run_snakemake(tmp_path, "--cores", "1", config=config)
    assert result.returncode != 0
    assert the_error_line(result.stderr, "config error at").startswith("config error at interpolation.n:")
    assert_nothing_made(tmp_path)


def test_a_checkpoint_that_is_not_there_stops_the_run_before_anything_runs(tmp_path):
    config = {**tiny_config(), "checkpoint": "missing.pt"}
    result = run_snakemake(tmp_path, "--cores", "1", config=config)
    assert result.returncode != 0
    # The whole output is that one line: no traceback, no Snakemake banner.
    [line] = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert line.startswith("config error at checkpoint: missing.pt does not exist"), line
    assert "set it to train to train a model with the workflow" in line
    assert_nothing_made(tmp_path)


def failing_rule_run(tmp_path, config, target) -> str:
    result = run_snakemake(tmp_path, "--cores", "1", target, config=config)
    assert result.returncode != 0
    return the_error_line(result.stderr, "error in rule")


def test_full_mnist_without_network_or_files_says_what_to_do(tmp_path, monkeypatch):
    config = tiny_config()
    # A closed port on loopback stands in for "no network"; nothing leaves this machine. pip sees
    # no index: an empty folder of links, and no pip.conf that would name one.
    config["data"] = {**config["data"], "source": "mnist", "mirrors": ["http://127.0.0.1:9/"]}
    (tmp_path / "no-index").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-index"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    line = failing_rule_run(tmp_path, config, "resources/mnist/manifest.json")
    assert "download_mnist" in line and "MNIST/raw" in line and "mnist-5k" in line
    assert "package index" in line
    assert not list((tmp_path / "resources/mnist").glob("*.pt"))


def test_a_bad_checkpoint_fails_the_first_rule_that_reads_it_with_one_line(tmp_path):
    config = tiny_config()
    bad = tmp_path / "bad_model.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 64)
    config["checkpoint"] = str(bad)
    line = failing_rule_run(tmp_path, config, "results/timestep_loss.csv")
    # The first rule to read a model is describe_model, which every model rule waits for.
    assert "describe_model" in line and str(bad) in line and "not a readable PyTorch file" in line
    assert not (tmp_path / "results/model.json").exists()
    assert not (tmp_path / "results/timestep_loss.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this case needs a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error(tmp_path):
    config = tiny_config()
    config["device"] = "cuda"
    line = failing_rule_run(tmp_path, config, "results/train/best_model.pt")
    assert "train" in line and "no CUDA GPU" in line
    assert not (tmp_path / "results/train/best_model.pt").exists()


def test_a_trained_model_leaves_its_trajectory(tiny_run):
    """checkpoint: train with snapshot_every: the snapshots are a trajectory the default target
    follows, both weights side by side (the tiny config asks for both)."""
    config = tiny_config()
    every = config["train"]["snapshot_every"]
    steps = list(range(every, config["train"]["steps"] + 1, every))
    buckets = config["timestep_loss"]["buckets"]
    snapshots = sorted(p.name for p in (tiny_run / "results/train/snapshots").iterdir())
    assert snapshots == [f"step-{step:07d}.pt" for step in steps]
    with open(tiny_run / "results/trajectory/trajectory.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["step"]), r["weights"], int(r["bucket"])) for r in rows] == [
        (step, weights, bucket)
        for step in steps
        for weights in ("ema", "online")
        for bucket in range(buckets)
    ]
    assert all(float(r["eps_mse"]) > 0 and float(r["eps_std_error"]) > 0 for r in rows)
    with open(tiny_run / "results/trajectory/bound.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * len(steps)
    # The tiny config shares the checkpoints between two jobs, consecutive ones each.
    jobs = config["trajectory"]["jobs"]
    parts = [tiny_run / f"results/trajectory/parts/{part}.pt" for part in range(jobs)]
    shares = [[(one.point.step, one.point.weights) for one in read_measured([part])] for part in parts]
    assert [len(share) for share in shares] == [len(rows) // buckets // jobs] * jobs
    assert sum(shares, []) == [(step, weights) for step in steps for weights in ("ema", "online")]
    found = json.loads((tiny_run / "results/trajectory/findings.json").read_text())
    assert set(found) == {"regressing", "stalled", "collapsed", "rules"}
    with Image.open(tiny_run / "results/trajectory/samples.png") as image:
        # A row per checkpoint and weights, a column per starting noise: 30-pixel tiles.
        assert image.size == (config["trajectory"]["samples"] * 30 + 2, 2 * len(steps) * 30 + 2)
    with open(tiny_run / "results/train/history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert [key for key in history[0] if key.startswith("val_eps_mse")] == [
        f"val_eps_mse_bucket_{b}" for b in range(buckets)
    ]
