"""The workflow on models made elsewhere: diffusers folders of both layouts, a Hub id served by a
stand-in Hub, a user's own network by its entry point, beside this package's own checkpoint, in one
sweep; and `checkpoint:` naming something that is not there."""

from __future__ import annotations

import csv
import json
import threading

import own_network
import pytest
import torch
from PIL import Image

from diffusion_diagnostics import save_checkpoint
from diffusion_diagnostics.grids import load_endpoints

from conftest import (
    REPO,
    StandInHub,
    run_snakemake,
    save_diffusers_folder,
    tiny_config,
    tiny_unet,
    tree_digest,
)

pytestmark = pytest.mark.workflow

SCHEDULE = {"timesteps": 20, "beta_start": 1e-3, "beta_end": 0.2}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A flat diffusers folder with .bin weights, served as the Hub serves owner/flat-ddpm."""
    folder = save_diffusers_folder(tmp_path / "served", "flat", sample_size=28, safe=False, **_scheduler())
    server = StandInHub(folder, "owner/flat-ddpm")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    yield server
    server.shutdown()
    server.server_close()


def _scheduler(**changes) -> dict:
    return {"num_train_timesteps": 20, "beta_start": 1e-3, "beta_end": 0.2, **changes}


def test_a_sweep_of_every_kind_of_model(tmp_path, hub, monkeypatch):
    work = tmp_path / "run"
    work.mkdir()
    save_checkpoint(work / "mine.pt", tiny_unet(), SCHEDULE)
    folder = save_diffusers_folder(
        work / "my-ddpm",
        "pipeline",
        sample_size=32,
        **_scheduler(prediction_type="v_prediction", variance_type="fixed_large", clip_sample=True),
    )
    weights = work / "own.pt"
    torch.save(own_network.build().state_dict(), weights)
    before = {
        "mine.pt": tree_digest(work / "mine.pt"),
        "my-ddpm": tree_digest(folder),
        "own.pt": tree_digest(weights),
    }
    # The jobs import the user's network as the entry point names it.
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))
    config = tiny_config()
    config["models"] = {
        "mine": {"checkpoint": "mine.pt"},
        "folder": {"checkpoint": "my-ddpm"},
        "hub": {"checkpoint": "hf:owner/flat-ddpm"},
        "own": {
            "checkpoint": {
                "entry_point": "own_network:build",
                "weights": "own.pt",
                "sample_shape": [1, 28, 28],
                "schedule": _scheduler(prediction_type="sample"),
            }
        },
    }
    result = run_snakemake(work, "--cores", "2", "--resources", "gpu=1", config=config, timeout=1500)
    assert result.returncode == 0, result.stdout + result.stderr

    cards = {
        name: json.loads((work / "results" / name / "model.json").read_text()) for name in config["models"]
    }
    assert {name: card["source"] for name, card in cards.items()} == {
        "mine": "checkpoint",
        "folder": "diffusers",
        "hub": "diffusers",
        "own": "entry_point",
    }
    assert cards["folder"]["sample_shape"] == [1, 32, 32] and cards["folder"]["digits"].startswith("padded")
    assert cards["folder"]["process"]["prediction_type"] == "v_prediction"
    assert cards["folder"]["process"]["variance_type"] == "fixed_large"
    assert cards["hub"]["details"]["layout"] == "flat" and cards["hub"]["checkpoint"] == "hf:owner/flat-ddpm"
    assert cards["hub"]["path"] == "resources/models/owner--flat-ddpm"
    assert cards["own"]["process"]["prediction_type"] == "sample"
    assert (work / "resources" / "models" / "owner--flat-ddpm" / "diffusion_pytorch_model.bin").is_file()

    # Noise in each model's shape; the grids and the judge see 28 x 28 digits whatever the model.
    z0, _ = load_endpoints(work / "results" / "folder" / "noise" / "ddim_endpoints.pt")
    assert z0.shape[1:] == (1, 32, 32)
    mine_z0, _ = load_endpoints(work / "results" / "mine" / "noise" / "ddim_endpoints.pt")
    hub_z0, _ = load_endpoints(work / "results" / "hub" / "noise" / "ddim_endpoints.pt")
    assert torch.equal(mine_z0, hub_z0), "models of one shape decode the same noise"
    rows, columns = config["interpolation"]["n"], config["interpolation"]["steps"]
    for name in config["models"]:
        with Image.open(work / "results" / name / "interp_ddim.png") as grid:
            # torchvision's save_image: 2-pixel padding around and between 28 x 28 tiles.
            assert grid.size == (columns * 30 + 2, rows * 30 + 2)
        with open(work / "results" / name / "quality" / "sample_quality.csv") as handle:
            assert next(csv.DictReader(handle))["set"] == "samples"
    with open(work / "results" / "compare" / "timestep_loss.csv") as handle:
        assert {row["model"] for row in csv.DictReader(handle)} == set(config["models"])
    after = {
        "mine.pt": tree_digest(work / "mine.pt"),
        "my-ddpm": tree_digest(folder),
        "own.pt": tree_digest(weights),
    }
    assert after == before, "a user's files are never written"
    assert "owner--flat-ddpm" in (work / "logs" / "hub" / "describe_model.log").read_text()


@pytest.mark.parametrize(
    ("checkpoint", "words"),
    [
        ("missing.pt", "config error at checkpoint: missing.pt does not exist"),
        ("hf:not-an-id", "not a Hugging Face Hub id"),
    ],
)
def test_a_checkpoint_that_is_not_there_stops_the_run_before_anything_runs(tmp_path, checkpoint, words):
    config = {**tiny_config(), "checkpoint": checkpoint}
    result = run_snakemake(tmp_path, "--cores", "1", config=config)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], lines
    if checkpoint.endswith(".pt"):
        assert "set it to train to train a model with the workflow" in lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()
