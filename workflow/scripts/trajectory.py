"""Rule trajectory: every checkpoint of a training run measured alike (errors per bucket, the bound,
DDIM samples of the same noises), as tables, a heatmap, the bound against step, the samples, and
the buckets that regress, stall or collapse."""

import json
import logging

import torch

from diffusion_diagnostics.diffusion import SamplingOptions
from diffusion_diagnostics.digits import check_fit, to_digit_size
from diffusion_diagnostics.files import write_csv, write_json
from diffusion_diagnostics.grids import save_grid
from diffusion_diagnostics.plots import plot_trajectory_bound, plot_trajectory_heatmap
from diffusion_diagnostics.runtime import resolve_device
from diffusion_diagnostics.trajectory import (
    bound_rows,
    find_checkpoints,
    findings,
    follow,
    load_checkpoint_of,
    trajectory_rows,
)
from diffusion_diagnostics.workflow import digits_for, run_rule


def main(snakemake):
    settings = snakemake.params.settings
    device = resolve_device(snakemake.params.device)
    points = find_checkpoints(snakemake.params.checkpoints, settings["scheduler"], settings["weights"])
    logging.info("trajectory of %d checkpoints: %s", len(points), ", ".join(p.label for p in points))
    first = load_checkpoint_of(points[0], device)
    fit = snakemake.params.image_fit
    logging.info("digits %s", check_fit(first.sample_shape, fit))
    images = digits_for(first, snakemake.input.heldout, fit).tensors[0][: settings["images"]]
    noises = torch.randn(
        (settings["samples"], *first.sample_shape), generator=torch.Generator().manual_seed(settings["seed"])
    )
    del first
    measured = follow(
        points,
        images,
        noises,
        buckets=snakemake.params.buckets,
        batch_size=settings["batch_size"],
        seed=settings["seed"],
        ddim_steps=settings["ddim_steps"],
        device=device,
        options=SamplingOptions(cuda_graphs=snakemake.config["cuda_graphs"], **snakemake.params.sampling),
    )
    rows, bounds = trajectory_rows(measured), bound_rows(measured)
    write_csv(rows, snakemake.output.csv)
    write_csv(bounds, snakemake.output.bound_csv)
    found = findings(measured)
    for kind in ("regressing", "stalled", "collapsed"):
        for item in found[kind]:
            logging.warning("%s: %s", kind, json.dumps(item))
    write_json(found, snakemake.output.findings)
    plot_trajectory_heatmap(rows, snakemake.output.heatmap)
    plot_trajectory_bound(rows, bounds, snakemake.output.bound)
    samples = torch.stack([to_digit_size(one.samples, fit) for one in measured])
    save_grid(samples, snakemake.output.samples)


run_rule(main, snakemake)  # noqa: F821
