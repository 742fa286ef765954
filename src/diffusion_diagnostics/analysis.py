"""How well the model denoises at each stage of diffusion.

Per timestep bucket, from the same forward passes: the ε-MSE the original utility measures, the
x̂_0- and v-MSE, the bucket's log-SNR and its share of the variational bound, whose terms and
estimate are bound.py's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from .bound import (
    BoundSamples,
    VariationalBound,
    bound_terms_bpd,
    check_bound_applies,
    check_pixel_range,
    compare_with_exact,
    decoder_pass,
    estimate_bound,
    exact_bound,
    on_8bit_grid,
    predicted,
    prior_bpd,
)
from .diffusion import DiffusionProcess
from .errors import DiagnosticsError
from .files import read_csv, write_csv
from .runtime import model_device
from .strata import bucket_moments, raise_if_not_finite

T_SAMPLING = ("stratified", "uniform")
# The decoder pass and the exact check draw their noise from generators of their own, seeded apart
# from the main one (which keeps seed itself, so the ε-MSE draws are the original's).
DECODER_STREAM, EXACT_STREAM = 1 << 32, 2 << 32


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


@dataclass
class TimestepLossTable(TimestepLoss):
    """Every error of one set of forward passes per bucket, and the bucket's part of the bound.

    ``mean`` and ``std_error`` are the ε-MSE's, as in :class:`TimestepLoss`; ``x0_*`` and ``v_*``
    the x̂_0- and v-MSE's; ``objective`` the one the model trains on (its prediction type);
    ``log_snr_*`` λ = log(ᾱ_t / (1 - ᾱ_t)) at the bucket's first and last t; ``vb_mean`` the mean
    bound term per timestep of the bucket (bits/dim), ``vb_share`` the bucket's share of the total.
    """

    x0_mean: torch.Tensor
    x0_std_error: torch.Tensor
    v_mean: torch.Tensor
    v_std_error: torch.Tensor
    objective: str
    log_snr_start: torch.Tensor
    log_snr_end: torch.Tensor
    vb_mean: torch.Tensor
    vb_std_error: torch.Tensor
    vb_share: torch.Tensor
    bound: VariationalBound

    def rows(self) -> list[dict]:
        return [
            {
                **row,
                "x0_mse": float(self.x0_mean[i]),
                "x0_std_error": float(self.x0_std_error[i]),
                "v_mse": float(self.v_mean[i]),
                "v_std_error": float(self.v_std_error[i]),
                "objective": self.objective,
                "log_snr_start": float(self.log_snr_start[i]),
                "log_snr_end": float(self.log_snr_end[i]),
                "vb_bpd": float(self.vb_mean[i]),
                "vb_std_error": float(self.vb_std_error[i]),
                "vb_share": float(self.vb_share[i]),
            }
            for i, row in enumerate(super().rows())
        ]


@dataclass
class ForwardPass:
    """One batch's draws and the network's answer, read through the model's parametrization."""

    index: int
    x_0: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    x_t: torch.Tensor
    eps: torch.Tensor
    x0_predicted: torch.Tensor
    log_variance: torch.Tensor | None = None  # the network's own, for a learned variance


def forward_passes(
    diffusion: DiffusionProcess,
    loader,
    num_batches: int,
    edges: torch.Tensor,
    sampling: str,
    seed: int,
    device: torch.device,
) -> Iterator[ForwardPass]:
    """The loss analysis's passes: t and noise per batch from one generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    seen = 0
    for index, batch in enumerate(loader):
        if index >= num_batches:
            break
        x_0 = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
        t = draw_timesteps(seen, len(x_0), edges, sampling, generator)
        noise = torch.randn(x_0.shape, generator=generator)
        t, noise = t.to(device), noise.to(device)
        x_t, _ = diffusion.add_noise(x_0, t, noise=noise)
        yield ForwardPass(index, x_0, t, noise, x_t, *predicted(diffusion, x_t, t))
        seen += len(x_0)


def per_sample_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (predicted - target).pow(2).flatten(1).mean(1).double()


def prediction_errors(
    diffusion: DiffusionProcess, step: ForwardPass, finite_only: bool = True
) -> dict[str, torch.Tensor]:
    """Each sample's ε-, x̂_0- and v-MSE, float64 on the CPU; v̂ from (ε̂, x̂_0) by the same relation
    as v (Salimans & Ho, section 4), so the three agree with each other whatever the model predicts.
    ``finite_only``: a NaN or Inf error is one error line naming its timestep."""
    v = diffusion.velocity(step.x_0, step.noise, step.t)
    v_predicted = diffusion.velocity(step.x0_predicted, step.eps, step.t)
    errors = {
        "eps": per_sample_mse(step.eps, step.noise),
        "x0": per_sample_mse(step.x0_predicted, step.x_0),
        "v": per_sample_mse(v_predicted, v),
    }
    if finite_only:
        raise_if_not_finite(errors["eps"], step.t, step.index)
    return {name: values.cpu() for name, values in errors.items()}


def bucket_of(t: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(t, edges, right=True) - 1


def bucket_means(values: torch.Tensor, t: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The mean of per-sample ``values`` in each bucket of t (NaN for an empty bucket)."""
    mean, _, _ = bucket_moments(values.double(), bucket_of(t, edges), len(edges) - 1)
    return mean


def check_every_bucket_filled(count: torch.Tensor, seen: int) -> None:
    if seen == 0:
        raise DiagnosticsError("the data loader gave no batches; nothing to measure")
    empty = torch.nonzero(count == 0).flatten().tolist()
    if empty:
        raise DiagnosticsError(
            f"timestep bucket(s) {empty} got no samples ({seen} samples over {len(count)} buckets); "
            "use more batches, fewer buckets, or stratified t sampling"
        )


def loss_statistics(t: torch.Tensor, eps_error: torch.Tensor, edges: torch.Tensor) -> TimestepLoss:
    """The original utility's table: ε-MSE per bucket, with counts and standard errors."""
    mean, count, variance = bucket_moments(eps_error, bucket_of(t, edges), len(edges) - 1)
    check_every_bucket_filled(count, len(t))
    return TimestepLoss(
        t_start=edges[:-1].clone(),
        t_end=edges[1:] - 1,
        mean=mean,
        count=count,
        std_error=(variance / count).sqrt(),
    )


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
    t, eps_error = [], []
    for step in forward_passes(diffusion, loader, num_batches, edges.to(device), sampling, seed, device):
        t.append(step.t.cpu())
        eps_error.append(prediction_errors(diffusion, step)["eps"])
    if not t:
        raise DiagnosticsError("the data loader gave no batches; nothing to measure")
    return loss_statistics(torch.cat(t), torch.cat(eps_error), edges)


def log_snr(diffusion: DiffusionProcess, t: torch.Tensor) -> torch.Tensor:
    """λ_t = log(ᾱ_t / (1 - ᾱ_t)), from √ᾱ and √(1-ᾱ), which keep their digits at both ends."""
    return 2 * (
        diffusion.sqrt_alpha_bars.double().cpu()[t].log()
        - diffusion.sqrt_one_minus_alpha_bars.double().cpu()[t].log()
    )


@dataclass
class Measured:
    """What the passes of :func:`timestep_loss_table` leave: per-sample values (t, the three
    errors, each draw's bound term, each image's L_0 and L_T), whether every pixel sat on the 8-bit
    grid, and the first images, kept for the exact check."""

    values: dict[str, torch.Tensor]
    on_8bit_grid: bool
    first_images: torch.Tensor
    batch_size: int


def measure(
    diffusion: DiffusionProcess,
    loader,
    num_batches: int,
    edges: torch.Tensor,
    sampling: str,
    seed: int,
    device: torch.device,
    keep_images: int,
    finite_only: bool = True,
) -> Measured:
    """Every per-sample value of the loss analysis; ``finite_only`` False lets a model's NaN or Inf
    through as values (a trajectory reports a collapsed checkpoint instead of stopping at it)."""
    decoder_generator = torch.Generator().manual_seed(seed + DECODER_STREAM)
    columns = {name: [] for name in ("t", "eps", "x0", "v", "term", "decoder", "prior")}
    kept, on_grid, batch_size = [], True, 0
    for step in forward_passes(diffusion, loader, num_batches, edges.to(device), sampling, seed, device):
        check_pixel_range(step.x_0)
        on_grid = on_grid and on_8bit_grid(step.x_0)
        batch_size = max(batch_size, len(step.x_0))
        columns["t"].append(step.t.cpu())
        for name, values in prediction_errors(diffusion, step, finite_only).items():
            columns[name].append(values)
        columns["term"].append(
            bound_terms_bpd(diffusion, step.x_0, step.x_t, step.t, step.x0_predicted, step.log_variance).cpu()
        )
        columns["decoder"].append(decoder_pass(diffusion, step.x_0, decoder_generator, finite_only))
        columns["prior"].append(prior_bpd(diffusion, step.x_0).cpu())
        if sum(map(len, kept)) < keep_images:
            kept.append(step.x_0)
    if not columns["t"]:
        raise DiagnosticsError("the data loader gave no batches; nothing to measure")
    first_images = torch.cat(kept)[:keep_images] if kept else torch.empty(0)
    values = {name: torch.cat(parts) for name, parts in columns.items()}
    return Measured(values, on_grid, first_images, batch_size)


def assemble_table(diffusion: DiffusionProcess, measured: Measured, edges: torch.Tensor) -> TimestepLossTable:
    """Per-bucket statistics and the bound's estimate from the measured per-sample values."""
    values = measured.values
    eps = loss_statistics(values["t"], values["eps"], edges)
    bucket, buckets = bucket_of(values["t"], edges), len(edges) - 1
    x0_mean, _, x0_variance = bucket_moments(values["x0"], bucket, buckets)
    v_mean, _, v_variance = bucket_moments(values["v"], bucket, buckets)
    samples = BoundSamples(values["t"], values["term"], values["decoder"], values["prior"])
    bound, vb_mean, vb_std_error = estimate_bound(samples, edges, diffusion.timesteps, measured.on_8bit_grid)
    width = (edges[1:] - edges[:-1]).double()
    return TimestepLossTable(
        **vars(eps),
        x0_mean=x0_mean,
        x0_std_error=(x0_variance / eps.count).sqrt(),
        v_mean=v_mean,
        v_std_error=(v_variance / eps.count).sqrt(),
        objective=diffusion.prediction_type,
        log_snr_start=log_snr(diffusion, eps.t_start),
        log_snr_end=log_snr(diffusion, eps.t_end),
        vb_mean=vb_mean,
        vb_std_error=vb_std_error,
        vb_share=width * vb_mean / bound.total_bpd,
        bound=bound,
    )


@torch.inference_mode()
def timestep_loss_table(
    diffusion: DiffusionProcess,
    loader,
    num_batches: int = 10,
    buckets: int = 10,
    device: torch.device | str | None = None,
    sampling: str = "stratified",
    seed: int = 0,
    exact_check_images: int = 0,
) -> TimestepLossTable:
    """:func:`timestep_loss_statistics` and everything else its forward passes tell, per bucket:
    x̂_0- and v-MSE, log-SNR, the bound's terms; and the bound in total (:class:`VariationalBound`).

    Its ε-MSE columns equal :func:`timestep_loss_statistics`'s (same draws, same passes). One more
    pass per image at t = 0 gives the decoder term L_0. ``exact_check_images`` > 0 also evaluates
    every t for that many of the first images (T passes each) and compares the two. Images must lie
    in [-1, 1], the 8-bit pixels' range; only fixed variances (``fixed_small``, ``fixed_large``)
    have a closed-form bound.
    """
    check_bound_applies(diffusion)
    device = torch.device(device) if device is not None else model_device(diffusion)
    edges = bucket_edges(diffusion.timesteps, buckets)
    measured = measure(diffusion, loader, num_batches, edges, sampling, seed, device, exact_check_images)
    table = assemble_table(diffusion, measured, edges)
    if exact_check_images > 0:
        generator = torch.Generator().manual_seed(seed + EXACT_STREAM)
        exact = exact_bound(diffusion, measured.first_images, measured.batch_size, generator)
        table.bound.exact_check = compare_with_exact((table.bound.total_bpd, table.bound.std_error), exact)
    return table


def per_timestep_loss(diffusion, loader, num_batches=10, buckets=10, device=None) -> torch.Tensor:
    """Mean ε-MSE per timestep bucket, shape ``(buckets,)``: the original utility's interface.

    ``device`` defaults to the device the model is on.
    """
    return timestep_loss_statistics(diffusion, loader, num_batches, buckets, device).mean.float()


def write_timestep_loss_csv(statistics: TimestepLoss, path: str | os.PathLike) -> None:
    write_csv(statistics.rows(), path)


def combine_timestep_loss_csvs(csv_by_model: Mapping[str, str | os.PathLike]) -> list[dict]:
    """The rows of several models' loss CSVs in one table, each led by its ``model`` name.

    Values are copied as written, so the table equals the per-model CSVs exactly. Models keep the
    mapping's order.
    """
    if not csv_by_model:
        raise DiagnosticsError("nothing to compare: config `models` names no model")
    combined, columns = [], None
    for model, path in csv_by_model.items():
        rows = read_csv(path)
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
