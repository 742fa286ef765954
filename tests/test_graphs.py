"""CUDA-graph sampling (``SamplingOptions(cuda_graphs=True)``): what a graph replays is the eager step.

Capturing needs a GPU, which CI has not (the capture was run on one: BENCHMARKS.md). What can be
checked here is everything the graph replays: each sampler's step in the form it is captured in,
reading its input from one static tensor that it overwrites in place and its step index from a
one-element int64 tensor, never reading a value back to the host, run here by a stand-in for
graphs.replay_steps that keeps that protocol but runs eagerly (conftest.replays). It must give the
eager loop's results bit for bit, and keep the NaN watch working.
"""

from __future__ import annotations

import pytest
import torch

import diffusion_diagnostics.diffusion as diffusion_module
from diffusion_diagnostics import DiagnosticsError, DiffusionProcess
from diffusion_diagnostics.diffusion import NonFiniteWatch, SamplingOptions

from doubles import breaking_process, tiny_unet

GRAPHS = SamplingOptions(cuda_graphs=True)


def run(diffusion: DiffusionProcess, sampler: str, x_T: torch.Tensor, options=None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if sampler == "ddpm":
        return diffusion.sample(x_T, generator=generator, options=options)
    if sampler == "ddpm_shared":
        return diffusion.sample(x_T, generator=generator, shared_noise=2, options=options)
    if sampler == "ddim":
        return diffusion.sample_ddim(x_T, 7, options=options)
    if sampler == "ddim_eta":
        return diffusion.sample_ddim(x_T, 7, eta=0.6, generator=generator, options=options)
    return diffusion.ddim_invert(x_T.clamp(-1, 1), 7, options=options)


@pytest.mark.parametrize("sampler", ["ddpm", "ddpm_shared", "ddim", "ddim_eta", "invert"])
def test_graph_form_of_each_step_gives_the_eager_result(sampler, replays):
    diffusion = DiffusionProcess(tiny_unet(), timesteps=20, beta_start=1e-3, beta_end=0.2)
    x_T = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    eager = run(diffusion, sampler, x_T)
    assert replays == []

    graphed = run(diffusion, sampler, x_T, GRAPHS)
    assert replays == [20 if sampler.startswith("ddpm") else 7]
    assert torch.equal(graphed, eager)
    assert torch.isfinite(eager).all() and eager.abs().max() > 0.1


@pytest.mark.parametrize(
    ("sampler", "bad_from", "named"), [("ddpm", 7, 7), ("ddim", 12, 11), ("invert", 3, 3)]
)
def test_graph_form_still_names_the_first_bad_timestep(sampler, bad_from, named, replays):
    diffusion = breaking_process(bad_from)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DiagnosticsError, match=f"NaN or Inf at timestep {named};"):
        if sampler == "ddpm":
            diffusion.sample(x, generator=torch.Generator().manual_seed(0), options=GRAPHS)
        elif sampler == "ddim":
            diffusion.sample_ddim(x, num_steps=5, options=GRAPHS)
        else:
            diffusion.ddim_invert(x, num_steps=5, options=GRAPHS)
    assert len(replays) == 1


def test_nan_watch_updates_its_tensor_in_place():
    """A replayed graph writes to the tensors it captured: the watch must not swap in a new one."""
    watch = NonFiniteWatch(torch.device("cpu"))
    captured = watch.first_bad
    watch.update(torch.zeros(3), torch.tensor(9))
    watch.update(torch.tensor([0.0, float("inf")]), torch.tensor(5))
    watch.update(torch.tensor([float("nan")]), torch.tensor(2))
    assert watch.first_bad is captured and int(captured) == 5


def test_nan_watch_tells_the_largest_finite_values_from_inf():
    """Its check sums the output: float32's largest values must not overflow into a false alarm,
    and Inf beside -Inf (a sum of NaN) must still be caught."""
    largest = torch.finfo(torch.float32).max
    watch = NonFiniteWatch(torch.device("cpu"))
    watch.update(torch.full((72, 1, 28, 28), largest), torch.tensor(9))
    watch.update(torch.full((72, 1, 28, 28), -largest), torch.tensor(8))
    assert int(watch.first_bad) == -1
    watch.update(torch.tensor([float("inf"), float("-inf"), 1.0]), torch.tensor(4))
    assert int(watch.first_bad) == 4


def test_cuda_graphs_change_nothing_off_cuda(monkeypatch):
    def no_capture(*args, **kwargs):
        raise AssertionError("a CPU run must not try to capture")

    monkeypatch.setattr(diffusion_module, "replay_steps", no_capture)
    diffusion = DiffusionProcess(tiny_unet(), timesteps=20, beta_start=1e-3, beta_end=0.2)
    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    eager = diffusion.sample_ddim(x_T, 5)
    assert torch.equal(diffusion.sample_ddim(x_T, 5, options=GRAPHS), eager)
