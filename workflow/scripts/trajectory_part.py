"""Rule trajectory_part: one job's share of a training run's checkpoints, each measured on the same
held-out digits with the same t and noise (errors per bucket, the bound, DDIM samples of the same
noises); rule trajectory puts the shares together."""

import logging

import torch

from diffusion_diagnostics.diffusion import SamplingOptions
from diffusion_diagnostics.digits import check_fit
from diffusion_diagnostics.runtime import resolve_device
from diffusion_diagnostics.trajectory import (
    find_checkpoints,
    follow,
    load_checkpoint_of,
    save_measured,
    share,
)
from diffusion_diagnostics.workflow import digits_for, run_rule


def main(snakemake):
    settings = snakemake.params.settings
    device = resolve_device(snakemake.params.device)
    points = find_checkpoints(snakemake.params.checkpoints, settings["scheduler"], settings["weights"])
    part, parts = int(snakemake.wildcards.part), settings["jobs"]
    mine = share(points, part, parts)
    logging.info(
        "trajectory of %d checkpoints, job %d of %d follows %d: %s",
        len(points), part + 1, parts, len(mine), ", ".join(p.label for p in mine) or "none",
    )  # fmt: skip
    # Every job draws the digits and the noises from the first checkpoint, so all share them.
    first = load_checkpoint_of(points[0], device)
    fit = snakemake.params.image_fit
    logging.info("digits %s", check_fit(first.sample_shape, fit))
    images = digits_for(first, snakemake.input.heldout, fit).tensors[0][: settings["images"]]
    noises = torch.randn(
        (settings["samples"], *first.sample_shape), generator=torch.Generator().manual_seed(settings["seed"])
    )
    measured = follow(
        mine,
        images,
        noises,
        buckets=snakemake.params.buckets,
        batch_size=settings["batch_size"],
        seed=settings["seed"],
        ddim_steps=settings["ddim_steps"],
        device=device,
        options=SamplingOptions(cuda_graphs=snakemake.config["cuda_graphs"], **snakemake.params.sampling),
        reference=(points[0], first),
    )
    save_measured(measured, snakemake.output[0])


run_rule(main, snakemake)  # noqa: F821
