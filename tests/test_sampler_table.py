"""The sampler table on Gaussian data, where the exact ε is known: every cell decodes the same noise,
its evaluations counted, scored against real data, and its distance to the ODE's own answer falls
as it takes more steps."""

from __future__ import annotations

import sys

import pytest
import torch

from diffusion_diagnostics import DiffusionProcess, sampler_table
from diffusion_diagnostics.quality import Judgement
from diffusion_diagnostics.sampler_table import SAMPLER_COLUMNS, Cell, available_samplers, sampler_rows

from doubles import MU, SD, ContinuousGaussianEps, gaussian_alpha_bars, one_error_line


def flat_judge(images: torch.Tensor) -> Judgement:
    """Features: the pixels themselves; probabilities: sure of class 0 (the scores need some)."""
    probabilities = torch.zeros(len(images), 10)
    probabilities[:, 0] = 1.0
    return Judgement(images.flatten(1).double(), probabilities)


def table(cells):
    network = ContinuousGaussianEps(gaussian_alpha_bars())
    diffusion = DiffusionProcess(network, 1000, 1e-4, 0.02, clip_sample=False, sample_shape=(1, 2, 2))
    generator = torch.Generator().manual_seed(0)
    real = MU + SD * torch.randn((400, 1, 2, 2), generator=generator)
    noise = torch.randn((200, 1, 2, 2), generator=generator)
    return sampler_rows(
        diffusion, flat_judge, flat_judge(real), cells, noise, reference_steps=100, batch_size=64
    )


def test_every_cell_is_scored_with_its_counted_evaluations():
    cells = [Cell("ddim", 4), Cell("ddim", 16), Cell("euler", 4), Cell("heun", 3), Cell("euler_ancestral", 4)]
    rows = table(cells)
    assert [list(row) for row in rows] == [SAMPLER_COLUMNS] * len(cells)
    assert [(row["sampler"], row["steps"], row["nfe"]) for row in rows] == [
        ("ddim", 4, 4),
        ("ddim", 16, 16),
        ("euler", 4, 4),
        ("heun", 3, 5),
        ("euler_ancestral", 4, 4),
    ]
    assert rows[-1]["ode_rmse"] is None  # a stochastic sampler has no single answer to be near
    # Deterministic DDIM is Euler's method on the ODE in σ (Karras et al. 2022): our DDIM and
    # diffusers' Euler, at the same timesteps, land on the same images.
    assert rows[2]["ode_rmse"] == pytest.approx(rows[0]["ode_rmse"], rel=1e-3)
    assert rows[2]["frechet_distance"] == pytest.approx(rows[0]["frechet_distance"], rel=1e-3)
    # More steps, nearer the ODE's answer, and nearer the data as the judge sees it.
    assert rows[1]["ode_rmse"] < rows[0]["ode_rmse"] / 3
    assert rows[1]["frechet_distance"] < rows[0]["frechet_distance"]
    assert all(row["seconds_per_sample"] > 0 and row["confident_share"] == 1.0 for row in rows)


def test_a_cell_that_cannot_run_is_one_error_line_before_any_runs(monkeypatch):
    one_error_line(lambda: table([]), "no cells")
    decoded = []
    monkeypatch.setattr(sampler_table, "decode", lambda *args: decoded.append(args))
    one_error_line(lambda: table([Cell("ddim", 4), Cell("dpm-fast", 4)]), "sampler 'dpm-fast'")
    one_error_line(lambda: table([Cell("ddim", 4), Cell("pndm", 2)]), "PNDMScheduler cannot take 2 steps")
    one_error_line(lambda: table([Cell("ddim", 4), Cell("euler_ancestral", 4, "karras")]), "no karras")
    one_error_line(lambda: table([Cell("euler", 4), Cell("ddim", 4, "karras")]), "timestep_spacing 'karras'")
    assert decoded == []


def test_without_diffusers_the_table_has_our_samplers_and_says_so(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    assert available_samplers(["ddim", "euler", "heun"]) == ["ddim"]
    assert 'euler, heun need diffusers: pip install -e ".[diffusers]"' in caplog.text
    one_error_line(lambda: available_samplers(["euler"]), "need diffusers, which is not installed")
