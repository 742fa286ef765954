"""Per-timestep ε-MSE (analysis.py) on models whose error at each timestep is known exactly.

With all-zero images, x_t = √(1-ᾱ_t) ε, so a model can recover ε exactly from x_t. The model
``OffsetEps`` returns ε + c(t): every sample's ε-MSE is then c(t)², whatever the noise. It records
the timesteps it is called with, so the expected value, count and standard error of each bucket
can be computed here, independently, from the t values that were actually drawn.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diffusion_diagnostics import (
    DiagnosticsError,
    DiffusionProcess,
    per_timestep_loss,
    timestep_loss_statistics,
)

from doubles import StandIn, ZeroEps, reference_schedule

T, BETA_START, BETA_END = 10, 1e-3, 0.2


def offset(t: torch.Tensor) -> torch.Tensor:
    """c(t): different for every timestep, so values inside a bucket differ."""
    return 0.1 * (t.double() + 1)


class OffsetEps(StandIn):
    """ε̂(x_t, t) = x_t / √(1-ᾱ_t) + c(t), i.e. exactly ε + c(t) when x_0 = 0."""

    def __init__(self, timesteps: int = T):
        super().__init__()
        alpha_bars = reference_schedule(timesteps, BETA_START, BETA_END)["alpha_bars"]
        self.register_buffer("sqrt_one_minus_ab", torch.from_numpy(np.sqrt(1 - alpha_bars)))
        self.calls: list[torch.Tensor] = []

    def forward(self, x_t, t):
        self.calls.append(t.clone())
        shape = (-1, *([1] * (x_t.ndim - 1)))
        eps = x_t.double() / self.sqrt_one_minus_ab[t].reshape(shape)
        return (eps + offset(t).reshape(shape)).to(x_t.dtype)

    def drawn_t(self) -> torch.Tensor:
        return torch.cat(self.calls)


def make_diffusion(model: nn.Module, timesteps: int = T) -> DiffusionProcess:
    return DiffusionProcess(model, timesteps, BETA_START, BETA_END, sample_shape=(1, 2, 2))


def zero_batches(sizes: list[int]) -> list[torch.Tensor]:
    return [torch.zeros(size, 1, 2, 2) for size in sizes]


def expected_buckets(t: torch.Tensor, timesteps: int, buckets: int):
    """Mean, count and standard error per bucket [i·T/K, (i+1)·T/K) of the per-sample errors c(t)²."""
    errors = offset(t) ** 2
    means, counts, std_errors = [], [], []
    for i in range(buckets):
        inside = (t >= i * timesteps // buckets) & (t < (i + 1) * timesteps // buckets)
        values = errors[inside]
        means.append(values.mean().item())
        counts.append(len(values))
        std_errors.append((values.std() / math.sqrt(len(values))).item() if len(values) > 1 else math.nan)
    as_float = {"dtype": torch.float64}
    return torch.tensor(means, **as_float), torch.tensor(counts), torch.tensor(std_errors, **as_float)


# --- exact values --------------------------------------------------------------------------------


def test_bucket_values_are_means_over_samples():
    model = OffsetEps()
    sizes = [5, 1, 7, 3]  # uneven batches: a mean of per-batch means would differ
    stats = timestep_loss_statistics(make_diffusion(model), zero_batches(sizes), num_batches=10, buckets=3)

    t = model.drawn_t()
    assert len(t) == sum(sizes) and ((t >= 0) & (t < T)).all()
    mean, count, std_error = expected_buckets(t, T, 3)
    # Bucket edges i·T/K: [0, 3), [3, 6), [6, 10), reported with inclusive ends.
    assert stats.t_start.tolist() == [0, 3, 6]
    assert stats.t_end.tolist() == [2, 5, 9]
    assert stats.count.tolist() == count.tolist()
    torch.testing.assert_close(stats.mean.double(), mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats.std_error.double(), std_error, rtol=1e-4, atol=1e-6)

    # The construction can tell the two averages apart: per-batch means averaged is not the answer.
    per_batch = []
    start = 0
    for size in sizes:
        batch_t = t[start : start + size]
        start += size
        per_batch.append(
            [
                (offset(batch_t[(batch_t >= a) & (batch_t <= b)]) ** 2).mean().item()
                for a, b in zip(stats.t_start.tolist(), stats.t_end.tolist(), strict=True)
            ]
        )
    mean_of_batch_means = torch.tensor(np.nanmean(np.array(per_batch), axis=0))
    assert not torch.allclose(mean_of_batch_means, mean, rtol=1e-3)


def test_buckets_of_width_one_give_each_timesteps_error():
    model = OffsetEps()
    stats = timestep_loss_statistics(make_diffusion(model), zero_batches([7, 13, 10]), buckets=T)

    assert stats.count.tolist() == [3] * T
    assert stats.t_start.tolist() == list(range(T)) == stats.t_end.tolist()
    torch.testing.assert_close(stats.mean.double(), offset(torch.arange(T)) ** 2, rtol=1e-5, atol=1e-7)
    # Identical errors inside a bucket: no spread.
    assert stats.std_error.abs().max() < 1e-5


def test_rows_for_the_csv():
    stats = timestep_loss_statistics(make_diffusion(OffsetEps()), zero_batches([4, 4]), buckets=2)
    rows = stats.rows()
    assert [row["bucket"] for row in rows] == [0, 1]
    assert [(row["t_start"], row["t_end"]) for row in rows] == [(0, 4), (5, 9)]
    assert [row["count"] for row in rows] == [4, 4]
    assert [row["mse"] for row in rows] == pytest.approx(stats.mean.tolist())


# --- how t is drawn ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "buckets", "counts"),
    [
        ([3, 3, 3], 4, [3, 2, 2, 2]),  # continues across batches, not restarting at bucket 0
        ([5, 6], 3, [4, 4, 3]),
        ([8, 8, 8, 8], 4, [8, 8, 8, 8]),
        ([1] * 7, 7, [1] * 7),
    ],
)
def test_stratified_sampling_balances_bucket_counts(sizes, buckets, counts):
    model = OffsetEps()
    stats = timestep_loss_statistics(make_diffusion(model), zero_batches(sizes), buckets=buckets)
    assert stats.count.tolist() == counts
    assert max(counts) - min(counts) <= 1
    assert expected_buckets(model.drawn_t(), T, buckets)[1].tolist() == counts


def test_uniform_sampling():
    model = OffsetEps()
    sizes = [50] * 8
    stats = timestep_loss_statistics(
        make_diffusion(model), zero_batches(sizes), buckets=4, sampling="uniform", seed=3
    )
    t = model.drawn_t()
    mean, count, _ = expected_buckets(t, T, 4)
    assert stats.count.tolist() == count.tolist()
    assert int(stats.count.sum()) == 400
    torch.testing.assert_close(stats.mean.double(), mean, rtol=1e-5, atol=1e-7)
    # Every timestep is drawn, and not in the stratified i mod K pattern.
    assert set(t.tolist()) == set(range(T))
    bucket_of_sample = torch.bucketize(t, torch.tensor([0, 2, 5, 7, 10]), right=True) - 1
    assert not torch.equal(bucket_of_sample, torch.arange(400) % 4)
    # t ~ U{0..T-1}: each timestep about 40 times (binomial sd ≈ 6).
    histogram = torch.bincount(t, minlength=T)
    assert (histogram - 40).abs().max() < 5 * math.sqrt(400 * 0.1 * 0.9)


def test_empty_bucket_is_an_error():
    diffusion = make_diffusion(OffsetEps())
    with pytest.raises(DiagnosticsError, match=r"bucket\(s\) \[.*\] got no samples"):
        timestep_loss_statistics(diffusion, zero_batches([1]), buckets=5, sampling="uniform")
    # Stratified with fewer samples than buckets leaves some empty too.
    with pytest.raises(DiagnosticsError, match="got no samples"):
        timestep_loss_statistics(diffusion, zero_batches([2]), buckets=5)


@pytest.mark.parametrize(
    ("kwargs", "loader", "match"),
    [
        ({"sampling": "random"}, [torch.zeros(4, 1, 2, 2)], "t sampling 'random' is unknown"),
        ({"buckets": 0}, [torch.zeros(4, 1, 2, 2)], "buckets must be between 1"),
        ({"buckets": T + 1}, [torch.zeros(4, 1, 2, 2)], "buckets must be between 1"),
        ({}, [], "no batches"),
        ({"num_batches": 0}, [torch.zeros(4, 1, 2, 2)], "no batches"),
    ],
)
def test_bad_arguments(kwargs, loader, match):
    with pytest.raises(DiagnosticsError, match=match):
        timestep_loss_statistics(make_diffusion(OffsetEps()), loader, **kwargs)


def test_non_finite_model_output_is_an_error():
    class Broken(ZeroEps):
        def forward(self, x_t, t):
            out = torch.zeros_like(x_t)
            out[t == 7] = math.nan
            return out

    with pytest.raises(DiagnosticsError, match="NaN or Inf at timestep 7"):
        timestep_loss_statistics(make_diffusion(Broken()), zero_batches([10]), buckets=T)


# --- statistics of a model with a random error ---------------------------------------------------


def test_zero_model_has_unit_error_with_known_spread():
    """ε̂ = 0: a sample's error is the mean of D = 16 squared normals, mean 1 and variance 2/D."""
    data = torch.rand(1600, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loader = list(data.split(40))
    diffusion = DiffusionProcess(ZeroEps(), 20, BETA_START, BETA_END)
    stats = timestep_loss_statistics(diffusion, loader, num_batches=len(loader), buckets=4, seed=1)

    assert stats.count.tolist() == [400] * 4
    expected_se = math.sqrt(2 / 16 / 400)
    assert ((stats.mean - 1).abs() < 5 * expected_se).all(), stats.mean
    assert ((stats.std_error / expected_se - 1).abs() < 0.25).all(), stats.std_error


# --- interface, loaders, seeds -------------------------------------------------------------------


def test_per_timestep_loss_interface():
    parameters = inspect.signature(per_timestep_loss).parameters
    assert list(parameters) == ["diffusion", "loader", "num_batches", "buckets", "device"]
    assert parameters["num_batches"].default == 10
    assert parameters["buckets"].default == 10
    assert parameters["device"].default is None

    model = OffsetEps()
    diffusion = make_diffusion(model)
    loader = zero_batches([4] * 12)  # more batches than num_batches: only 10 are used
    loss = per_timestep_loss(diffusion, loader)
    assert loss.shape == (10,) and loss.dtype == torch.float32
    assert len(model.drawn_t()) == 40
    torch.testing.assert_close(loss.double(), offset(torch.arange(T)) ** 2, rtol=1e-5, atol=1e-7)
    again = per_timestep_loss(diffusion, loader, num_batches=2, buckets=2, device="cpu")
    assert again.shape == (2,)


def test_loader_kinds_give_the_same_result():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 4, 4, generator=generator) * 2 - 1
    y = torch.arange(24)
    diffusion = DiffusionProcess(ZeroEps(), 20, BETA_START, BETA_END)
    loaders = {
        "tensors": list(x.split(8)),
        "tuples": list(zip(x.split(8), y.split(8), strict=True)),
        "lists": [[xb, yb] for xb, yb in zip(x.split(8), y.split(8), strict=True)],
        "DataLoader": DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False),
    }
    results = {name: timestep_loss_statistics(diffusion, data, buckets=4) for name, data in loaders.items()}
    reference = results.pop("tensors")
    for name, stats in results.items():
        assert torch.equal(stats.mean, reference.mean), name
        assert torch.equal(stats.count, reference.count), name


def test_same_seed_same_numbers_other_seed_other_numbers():
    data = list((torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1).split(16))
    diffusion = DiffusionProcess(ZeroEps(), 20, BETA_START, BETA_END)
    for sampling in ("stratified", "uniform"):
        first = timestep_loss_statistics(diffusion, data, buckets=2, sampling=sampling, seed=5)
        second = timestep_loss_statistics(diffusion, data, buckets=2, sampling=sampling, seed=5)
        other = timestep_loss_statistics(diffusion, data, buckets=2, sampling=sampling, seed=6)
        assert torch.equal(first.mean, second.mean) and torch.equal(first.std_error, second.std_error)
        assert torch.equal(first.count, second.count)
        assert not torch.equal(first.mean, other.mean)
