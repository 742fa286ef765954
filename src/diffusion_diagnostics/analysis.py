"""How well the model predicts noise at each stage of diffusion: ε-MSE per timestep bucket."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .diffusion import DiffusionProcess
from .errors import DiagnosticsError
from .files import atomic_output
from .runtime import model_device

T_SAMPLING = ("stratified", "uniform")


@dataclass
class TimestepLoss:
    """Per-bucket statistics; bucket i covers t in [t_start[i], t_end[i]] (inclusive)."""

    t_start: torch.Tensor
    t_end: torch.Tensor
    mean: torch.Tensor
    count: torch.Tensor
    std_error: torch.Tensor

    def rows(self) -> list[dict]:
        return [
            {
                "bucket": i,
                "t_start": int(self.t_start[i]),
                "t_end": int(self.t_end[i]),
                "mse": float(self.mean[i]),
                "count": int(self.count[i]),
                "std_error": float(self.std_error[i]),
            }
            for i in range(len(self.mean))
        ]


def bucket_edges(timesteps: int, buckets: int) -> torch.Tensor:
    """Edges e_0 = 0 < … < e_K = T; bucket i is [e_i, e_{i+1}), i.e. [i·T/K, (i+1)·T/K)."""
    if not 1 <= buckets <= timesteps:
        raise DiagnosticsError(
            f"buckets must be between 1 and the number of timesteps ({timesteps}), got {buckets}"
        )
    return torch.arange(buckets + 1) * timesteps // buckets


def draw_timesteps(
    first_index: int,
    batch_size: int,
    edges: torch.Tensor,
    sampling: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """t for samples first_index … first_index + batch_size - 1 of the whole analysis.

    Stratified: sample number i falls in bucket i mod K, uniform inside it, so over the run every
    bucket gets the same count (±1 when the total is not a multiple of K). Uniform: t ~ U{0..T-1},
    as the original utility drew it.
    """
    timesteps = int(edges[-1])
    if sampling == "uniform":
        return torch.randint(0, timesteps, (batch_size,), generator=generator)
    if sampling != "stratified":
        raise DiagnosticsError(f"t sampling '{sampling}' is unknown; use one of {', '.join(T_SAMPLING)}")
    bucket = (torch.arange(batch_size) + first_index) % (len(edges) - 1)
    width = edges[bucket + 1] - edges[bucket]
    return edges[bucket] + (torch.rand(batch_size, generator=generator) * width).long()


@torch.inference_mode()
def timestep_loss_statistics(
    diffusion: DiffusionProcess,
    loader,
    num_batches: int = 10,
    buckets: int = 10,
    device: torch.device | str | None = None,
    sampling: str = "stratified",
    seed: int = 0,
) -> TimestepLoss:
    """Mean ε-MSE per bucket over every sample that fell in it, with counts and standard errors.

    Each sample's error is the mean over its pixels of (ε̂ - ε)²; a bucket's value is the mean of
    the per-sample errors in it (not a mean of per-batch means). Draws of t and of the noise come
    from one generator seeded with ``seed``, so the numbers are reproducible.
    """
    device = torch.device(device) if device is not None else model_device(diffusion)
    edges = bucket_edges(diffusion.timesteps, buckets)
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(buckets, dtype=torch.float64, device=device)
    total_sq = torch.zeros_like(total)
    count = torch.zeros(buckets, dtype=torch.long, device=device)

    seen = 0
    for index, batch in enumerate(loader):
        if index >= num_batches:
            break
        x0 = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
        t = draw_timesteps(seen, len(x0), edges, sampling, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t, noise = t.to(device), noise.to(device)
        x_t, _ = diffusion.add_noise(x0, t, noise=noise)
        eps, _ = diffusion.eps_and_x0(x_t, t, diffusion.model(x_t, t))
        error = (eps - noise).pow(2).flatten(1).mean(1).double()
        if not torch.isfinite(error).all():
            bad = int(t[~torch.isfinite(error)][0])
            raise DiagnosticsError(
                f"the model returned NaN or Inf at timestep {bad} (batch {index}); "
                "the checkpoint is broken or diverged"
            )
        bucket = torch.bucketize(t, edges.to(device), right=True) - 1
        total.index_add_(0, bucket, error)
        total_sq.index_add_(0, bucket, error * error)
        count.index_add_(0, bucket, torch.ones_like(bucket))
        seen += len(x0)

    if seen == 0:
        raise DiagnosticsError("the data loader gave no batches; nothing to measure")
    empty = torch.nonzero(count == 0).flatten().tolist()
    if empty:
        raise DiagnosticsError(
            f"timestep bucket(s) {empty} got no samples ({seen} samples over {buckets} buckets); "
            "use more batches, fewer buckets, or stratified t sampling"
        )
    count_f = count.double()
    mean = total / count_f
    # Sample variance (n - 1); a bucket with one sample has no spread estimate, so its error is NaN
    # by design rather than a misleading zero.
    variance = (total_sq - count_f * mean**2).clamp(min=0) / (count_f - 1)
    return TimestepLoss(
        t_start=edges[:-1].clone(),
        t_end=edges[1:] - 1,
        mean=mean.cpu(),
        count=count.cpu(),
        std_error=(variance / count_f).sqrt().cpu(),
    )


def per_timestep_loss(diffusion, loader, num_batches=10, buckets=10, device=None) -> torch.Tensor:
    """Mean ε-MSE per timestep bucket, shape ``(buckets,)``: the original utility's interface.

    ``device`` defaults to the device the model is on.
    """
    return timestep_loss_statistics(diffusion, loader, num_batches, buckets, device).mean.float()


def write_timestep_loss_csv(statistics: TimestepLoss, path: str | os.PathLike) -> None:
    rows = statistics.rows()
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def read_timestep_loss_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def combine_timestep_loss_csvs(csv_by_model: Mapping[str, str | os.PathLike]) -> list[dict]:
    """The rows of several models' loss CSVs in one table, each led by its ``model`` name.

    Values are copied as written, so the table equals the per-model CSVs exactly. Models keep the
    mapping's order.
    """
    if not csv_by_model:
        raise DiagnosticsError("nothing to compare: config `models` names no model")
    combined, columns = [], None
    for model, path in csv_by_model.items():
        rows = read_timestep_loss_csv(path)
        if not rows:
            raise DiagnosticsError(f"{path} (model {model}): no rows")
        if columns is None:
            columns = list(rows[0])
        elif list(rows[0]) != columns:
            raise DiagnosticsError(
                f"{path} (model {model}): columns {list(rows[0])} differ from the other models' {columns}"
            )
        combined.extend({"model": model, **row} for row in rows)
    return combined


def write_timestep_loss_comparison_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Rows as :func:`combine_timestep_loss_csvs` returns them: model, then the single CSV's columns."""
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
