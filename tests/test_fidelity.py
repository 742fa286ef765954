"""DDIM fidelity at fewer steps and DDIM inversion, against closed forms."""

from __future__ import annotations

import pytest
import torch

from diffusion_diagnostics import DiagnosticsError, DiffusionProcess, Sampler
from diffusion_diagnostics.diffusion import SamplingOptions
from diffusion_diagnostics.fidelity import ddim_step_sweep, inversion_reconstruction

from doubles import ZeroEps, tiny_unet

T = 20


def process(model) -> DiffusionProcess:
    return DiffusionProcess(model, timesteps=T, beta_start=1e-3, beta_end=0.2, clip_sample=False)


def endpoints(n=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.randn(n, 1, 28, 28, generator=generator)


def test_step_sweep_is_exact_where_every_step_count_must_agree():
    """ε̂ = 0: unclipped, every S gives the same map, x_T / √ᾱ_{T-1}; clipped, the first step cuts
    x̂_0 to ±1, far from that map, and the later ones keep it (sign(x_T) at every S)."""
    z0, z1 = endpoints()
    rows = ddim_step_sweep(process(ZeroEps()), z0, z1, 3, [20, 2, 5], batch_size=4, progress=False)
    assert [(row["num_steps"], row["clip_x0"]) for row in rows] == [
        (2, False), (5, False), (20, False), (2, True), (5, True), (20, True)
    ]  # fmt: skip
    assert all(row["reference_steps"] == 20 and row["seconds"] > 0 for row in rows)
    for row in rows:
        if not row["clip_x0"]:
            assert row["rmse_to_reference"] == pytest.approx(0, abs=1e-6)
            assert row["max_error_to_reference"] == pytest.approx(0, abs=1e-5)
            assert row["rmse_to_unclipped"] == row["rmse_to_reference"]
        else:
            assert row["rmse_to_unclipped"] > 0.1
            assert row["rmse_to_reference"] == pytest.approx(0, abs=1e-6)


def test_step_sweep_measures_the_gap_of_a_real_network():
    z0, z1 = endpoints()
    rows = ddim_step_sweep(
        process(tiny_unet()), z0, z1, 3, [2, 20], batch_size=6, progress=False, clipping=(False,)
    )
    coarse, reference = rows
    assert reference["rmse_to_reference"] == 0 and reference["max_error_to_reference"] == 0
    assert coarse["rmse_to_reference"] > 1e-4
    assert coarse["max_error_to_reference"] >= coarse["rmse_to_reference"]


def test_inversion_round_trip_is_exact_for_a_zero_predictor():
    images = endpoints(3)[0].clamp(-1, 1)
    rows = inversion_reconstruction(
        process(ZeroEps()), images, [1, 4, 20], batch_size=2, progress=False, clipping=(False,)
    )
    assert [(row["num_steps"], row["images"], row["clip_x0"]) for row in rows] == [
        (1, 3, False), (4, 3, False), (20, 3, False)
    ]  # fmt: skip
    for row in rows:
        assert row["rmse"] == pytest.approx(0, abs=1e-5) and row["max_error"] == pytest.approx(0, abs=1e-4)


def test_inversion_error_of_a_real_network_shrinks_with_more_steps():
    images = endpoints(2)[0].clamp(-1, 1)
    diffusion = process(tiny_unet())
    rows = inversion_reconstruction(diffusion, images, [2, 20], batch_size=4, progress=False)
    unclipped = {row["num_steps"]: row for row in rows if not row["clip_x0"]}
    assert 0 < unclipped[20]["rmse"] < unclipped[2]["rmse"]
    # The inversion ignores the clipping asked for; only the decoding of the clipped rows clips.
    asked = inversion_reconstruction(
        diffusion,
        images,
        [2, 20],
        batch_size=4,
        progress=False,
        sampler=Sampler("ddim", options=SamplingOptions(clip_x0=True)),  # fmt: skip
    )
    assert [row["rmse"] for row in asked] == [row["rmse"] for row in rows]
    assert {row["clip_x0"] for row in rows} == {False, True}


def test_step_counts_must_be_given():
    z0, z1 = endpoints()
    with pytest.raises(DiagnosticsError, match="no DDIM step counts"):
        ddim_step_sweep(process(ZeroEps()), z0, z1, 3, [], progress=False)
    with pytest.raises(DiagnosticsError, match="between 1 and the number of timesteps"):
        inversion_reconstruction(process(ZeroEps()), z0, [40], progress=False)
