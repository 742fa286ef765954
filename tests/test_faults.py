"""Numerical faults: NaN or Inf from the model stops the work, names the timestep, writes nothing."""

from __future__ import annotations

import csv

import pytest
import torch

import diffusion_diagnostics.training as training
from diffusion_diagnostics import DiagnosticsError, interpolate_noise_and_generate
from diffusion_diagnostics.checkpoint import load_checkpoint
from diffusion_diagnostics.decoding import interpolation_grid
from diffusion_diagnostics.grids import save_grid
from diffusion_diagnostics.training import TrainConfig, train

from doubles import breaking_process


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_ddpm_sampling_names_the_first_bad_timestep(value):
    with pytest.raises(DiagnosticsError, match="timestep 7"):
        breaking_process(7, value).sample(
            torch.randn(2, 1, 28, 28), generator=torch.Generator().manual_seed(0)
        )


def test_ddim_sampling_names_the_first_bad_timestep():
    # 20 timesteps in 5 trailing steps: 19, 15, 11, 7, 3; the model breaks from t = 12 down.
    with pytest.raises(DiagnosticsError, match="timestep 11"):
        breaking_process(12).sample_ddim(torch.randn(2, 1, 28, 28), num_steps=5)


def test_ddim_inversion_names_the_first_bad_timestep():
    with pytest.raises(DiagnosticsError, match="timestep 3"):
        breaking_process(3).ddim_invert(torch.zeros(2, 1, 28, 28), num_steps=5)


def test_a_broken_model_writes_no_grid(tmp_path):
    path = tmp_path / "interp.png"
    with pytest.raises(DiagnosticsError, match="NaN or Inf at timestep 5"):
        interpolate_noise_and_generate(breaking_process(5), n=2, steps=3, save_path=str(path))
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_healthy_model_with_large_outputs_is_not_taken_for_a_broken_one(tmp_path):
    """The watch flags NaN and Inf only: a network whose outputs are as large as 1e30 but finite
    samples (DDPM with x̂_0 clipped) and saves its grid."""
    diffusion = breaking_process(-1, scale=1e30)
    images = interpolation_grid(
        diffusion, torch.randn(1, 1, 28, 28), torch.randn(1, 1, 28, 28), 3, progress=False
    )
    assert torch.isfinite(images).all() and images.abs().max() == 1  # x̂_0 clipped to the data range
    save_grid(images, tmp_path / "ok.png")
    assert (tmp_path / "ok.png").exists()


def test_training_stops_at_a_nan_loss_and_keeps_the_last_good_model(tmp_path, monkeypatch, caplog):
    calls = {"n": 0}
    real_mse = training.F.mse_loss

    def poisoned(prediction, target, reduction="mean"):
        if reduction == "mean":  # the training loss; validation sums
            calls["n"] += 1
            if calls["n"] >= 7:
                return real_mse(prediction, target) * float("nan")
        return real_mse(prediction, target, reduction=reduction)

    monkeypatch.setattr(training.F, "mse_loss", poisoned)
    config = TrainConfig(steps=20, batch_size=4, val_every=3, val_size=8, save_every=3, log_every=1)
    data = torch.rand(16, 1, 28, 28) * 2 - 1
    model = {"base_channels": 8, "channel_mults": [1], "num_res_blocks": 1, "dropout": 0.0}
    schedule = {"timesteps": 10, "beta_start": 1e-3, "beta_end": 0.2, "clip_sample": True}
    summary = train(
        data, data[:8], model, schedule, config,
        tmp_path / "best.pt", tmp_path / "state.pt", tmp_path / "history.csv", progress=False,
    )  # fmt: skip
    assert summary["stopped_early"] == "training loss became nan at step 7"
    assert summary["best_step"] == 6  # validated at 3 and 6, never after the NaN
    diffusion, metadata = load_checkpoint(tmp_path / "best.pt")  # finite weights, or it would raise
    assert metadata["best_step"] == 6
    with open(tmp_path / "history.csv") as handle:
        assert int(list(csv.DictReader(handle))[-1]["step"]) == 7
    assert "training stopped and kept the best model so far" in caplog.text
