"""Per-sample values by stratum (a bucket of timesteps, a cell of the bound's estimate): their
means, variances and covariances, and the check that a model's values are finite. Shared by the
errors' statistics (analysis.py) and the bound's estimate (bound.py)."""

from __future__ import annotations

import torch

from .errors import DiagnosticsError


def bucket_moments(
    values: torch.Tensor, bucket: torch.Tensor, buckets: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, count and sample variance (n - 1) of ``values`` per bucket; the variance of a bucket
    with one value is NaN by design rather than a misleading zero, its mean NaN when it has none."""
    count = torch.bincount(bucket, minlength=buckets)
    mean = torch.zeros(buckets, dtype=torch.float64).index_add_(0, bucket, values) / count
    spread = torch.zeros(buckets, dtype=torch.float64).index_add_(0, bucket, (values - mean[bucket]) ** 2)
    return mean, count, spread / (count - 1)


def bucket_covariance(x: torch.Tensor, y: torch.Tensor, bucket: torch.Tensor, buckets: int) -> torch.Tensor:
    """Sample covariance of x and y among the samples of each bucket."""
    mean_x, count, _ = bucket_moments(x, bucket, buckets)
    mean_y, _, _ = bucket_moments(y, bucket, buckets)
    products = (x - mean_x[bucket]) * (y - mean_y[bucket])
    return torch.zeros(buckets, dtype=torch.float64).index_add_(0, bucket, products) / (count - 1)


def raise_if_not_finite(values: torch.Tensor, t: torch.Tensor, index: int) -> None:
    if not torch.isfinite(values).all():
        bad = int(t[~torch.isfinite(values)][0])
        raise DiagnosticsError(
            f"the model returned NaN or Inf at timestep {bad} (batch {index}); "
            "the checkpoint is broken or diverged"
        )
