"""The sampler table on Gaussian data, where the exact ε is known: every cell decodes the same noise,
its evaluations counted, scored against real data, and its distance to the ODE's own answer falls
as it takes more steps; the cells of a configuration; the recommendation read from a table."""

from __future__ import annotations

import sys

import pytest
import torch

from diffusion_diagnostics import DiffusionProcess, sampler_table
from diffusion_diagnostics.decoding import Sampler
from diffusion_diagnostics.quality import Judgement
from diffusion_diagnostics.sampler_table import (
    FLOOR,
    SAMPLER_COLUMNS,
    available_samplers,
    recommend,
    sampler_cells,
)

from doubles import MU, SD, ContinuousGaussianEps, gaussian_alpha_bars, one_error_line


def flat_judge(images: torch.Tensor) -> Judgement:
    """Features: the pixels themselves; probabilities: sure of class 0 (the scores need some)."""
    probabilities = torch.zeros(len(images), 10)
    probabilities[:, 0] = 1.0
    return Judgement(images.flatten(1).double(), probabilities)


def gaussian_process() -> DiffusionProcess:
    network = ContinuousGaussianEps(gaussian_alpha_bars())
    return DiffusionProcess(network, 1000, 1e-4, 0.02, clip_sample=False, sample_shape=(1, 2, 2))


def table(cells, seeds=2):
    generator = torch.Generator().manual_seed(0)
    real = MU + SD * torch.randn((400, 1, 2, 2), generator=generator)
    floors = [flat_judge(MU + SD * torch.randn((200, 1, 2, 2), generator=generator)) for _ in range(3)]
    noises = [torch.randn((200, 1, 2, 2), generator=generator) for _ in range(seeds)]
    return sampler_table.sampler_table(
        gaussian_process(),
        flat_judge,
        flat_judge(real),
        floors,
        cells,
        noises,
        reference_steps=100,
        batch_size=64,
    )


def test_every_cell_is_scored_with_its_counted_evaluations():
    cells = [
        Sampler("ddim", 4),
        Sampler("ddim", 16),
        Sampler("euler", 4),
        Sampler("heun", 3),
        Sampler("euler_ancestral", 4),
    ]
    result = table(cells)
    floor, rows = result.rows[0], result.rows[1:]
    assert [list(row) for row in result.rows] == [SAMPLER_COLUMNS] * (len(cells) + 1)
    assert floor["sampler"] == FLOOR and floor["nfe"] is None and floor["frechet_distance_spread"] > 0
    assert [(row["sampler"], row["steps"], row["nfe"], row["seeds"]) for row in rows] == [
        ("ddim", 4, 4, 2),
        ("ddim", 16, 16, 2),
        ("euler", 4, 4, 2),
        ("heun", 3, 5, 2),
        ("euler_ancestral", 4, 4, 2),
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
    assert all(row["class_0"] == 200 for row in rows)  # the class histogram, a mean over the seeds
    # Two seeds, two noises: every score's spread is measured, and a mean lies inside its seeds'.
    assert all(row["frechet_distance_spread"] > 0 and row["kid_spread"] > 0 for row in rows)
    assert all(row["ode_rmse_spread"] > 0 for row in rows[:-1])
    # The grid's images: the same eight noises for every cell, labelled with the counted NFE.
    assert list(result.previews) == [
        "ddim (trailing), 4 NFE",
        "ddim (trailing), 16 NFE",
        "euler (trailing), 4 NFE",
        "heun (trailing), 5 NFE",
        "euler_ancestral (trailing), 4 NFE",
    ]
    assert all(images.shape == (8, 1, 2, 2) for images in result.previews.values())
    assert result.recommendation["sampler"] in {row["sampler"] for row in rows}


def test_one_seed_repeats_nothing_and_gives_no_spread():
    rows = table([Sampler("ddim", 4)], seeds=1).rows
    assert rows[1]["seeds"] == 1 and rows[1]["frechet_distance_spread"] is None
    assert rows[0]["seeds"] == 3  # the floor's draws


def test_the_cells_are_every_sampler_at_every_step_count_and_spacing_it_has(caplog):
    caplog.set_level("INFO")
    cells = sampler_cells(gaussian_process(), ["ddim", "euler", "ddpm"], [2, 4], ["trailing", "karras"])
    assert [(cell.kind, cell.steps, cell.timestep_spacing) for cell in cells] == [
        ("ddim", 2, "trailing"),
        ("ddim", 4, "trailing"),
        ("euler", 2, "trailing"),
        ("euler", 4, "trailing"),
        ("euler", 2, "karras"),
        ("euler", 4, "karras"),
        ("ddpm", 1000, "trailing"),  # all T steps, once
    ]
    assert "left out, as those samplers lack the spacing: ddim karras, ddpm karras" in caplog.text


def test_a_cell_that_cannot_run_is_one_error_line_before_any_runs(monkeypatch):
    diffusion = gaussian_process()
    decoded = []
    monkeypatch.setattr(sampler_table, "decode", lambda *args, **kwargs: decoded.append(args))
    one_error_line(lambda: table([]), "no cells")
    one_error_line(lambda: sampler_cells(diffusion, ["ddim"], [], ["trailing"]), "no cells")
    one_error_line(
        lambda: sampler_cells(diffusion, ["ddim", "dpm-fast"], [4], ["trailing"]), "sampler 'dpm-fast'"
    )
    one_error_line(
        lambda: sampler_cells(diffusion, ["ddim", "pndm"], [4, 2], ["trailing"]),
        "PNDMScheduler cannot take 2 steps",
    )
    one_error_line(
        lambda: sampler_cells(diffusion, ["ddim", "euler"], [4], ["karras"]),
        "'ddim' has none of the spacings karras",
    )
    one_error_line(
        lambda: sampler_cells(diffusion, ["ddim", "euler"], [4], ["cosine"]), "no sampler of ddim, euler"
    )
    predicts_x0 = DiffusionProcess(
        diffusion.model, 1000, 1e-4, 0.02, prediction_type="sample", sample_shape=(1, 2, 2)
    )
    one_error_line(
        lambda: sampler_cells(predicts_x0, ["ddim", "pndm"], [4], ["trailing"]),
        "PNDMScheduler",
        "must be one of",
    )
    one_error_line(
        lambda: sampler_cells(diffusion, ["ddim", "FlowMatchEulerDiscreteScheduler"], [4], ["trailing"]),
        "takes no β schedule",
    )
    assert decoded == []


def row(sampler, nfe, distance, spread=""):
    return {"sampler": sampler, "spacing": "trailing", "steps": nfe, "nfe": nfe,
            "frechet_distance": distance, "frechet_distance_spread": spread}  # fmt: skip


def test_the_recommendation_is_the_fewest_evaluations_within_the_noise_of_the_best():
    floor = {**row(FLOOR, "", 1.0, 0.5), "steps": "", "nfe": ""}
    rows = [floor, row("ddim", 5, 9.0), row("ddim", 10, 4.2), row("unipc", 10, 3.9), row("heun", 19, 3.6),
            row("ddim", 50, 3.5)]  # fmt: skip
    # The floor's spread (0.5) is the noise: 4.2 and 3.9 are within it of 3.5; at 10 NFE the nearer.
    chosen = recommend(rows)
    assert (chosen["sampler"], chosen["nfe"], chosen["noise"]) == ("unipc", 10, 0.5)
    assert chosen["best"]["sampler"] == "ddim" and chosen["best"]["nfe"] == 50
    assert chosen["sentence"].startswith("unipc (trailing) at 10 NFE: Fréchet distance 3.9, within the noise")
    # A best cell whose own spread over seeds is larger widens the noise to it.
    rows[-1]["frechet_distance_spread"] = "6.0"
    assert recommend(rows)["nfe"] == 5
    # Read back from a CSV, every value a string, and a cell without a distance left out.
    as_read = [{key: str(value) for key, value in r.items()} for r in rows] + [row("euler", 2, "nan")]
    assert recommend(as_read)["nfe"] == 5
    assert recommend([floor]) is None


def test_without_diffusers_the_table_has_our_samplers_and_says_so(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    assert available_samplers(["ddim", "euler", "heun"]) == ["ddim"]
    assert 'euler, heun need diffusers: pip install -e ".[diffusers]"' in caplog.text
    one_error_line(lambda: available_samplers(["euler"]), "need diffusers, which is not installed")
    one_error_line(
        lambda: Sampler("euler", 4).check(gaussian_process()), "diffusers', which is not installed"
    )


def test_the_noises_and_the_floors_sets_are_seeded():
    noises = sampler_table.seeded_noises(4, (1, 2, 2), seed=3, seeds=2)
    assert [noise.shape for noise in noises] == [(4, 1, 2, 2)] * 2
    assert torch.equal(noises[1], sampler_table.seeded_noises(4, (1, 2, 2), seed=4, seeds=1)[0])
    digits = torch.arange(10.0).reshape(10, 1, 1, 1)
    floors = sampler_table.floor_sets(digits, 6, seed=0)
    assert len(floors) == sampler_table.FLOOR_DRAWS
    assert all(len(set(floor.flatten().tolist())) == 6 for floor in floors)  # no digit drawn twice
    assert [
        torch.equal(a, b) for a, b in zip(floors, sampler_table.floor_sets(digits, 6, seed=0), strict=True)
    ] == [True] * len(floors)
