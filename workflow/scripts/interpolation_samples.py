"""Rule interpolation_samples: decode one interpolation grid (sampler, method, per-step noise) and
keep its images for the PNG and the metrics."""

import logging

import torch

from diffusion_diagnostics.decoding import Sampler, interpolation_grid
from diffusion_diagnostics.digits import to_digit_size
from diffusion_diagnostics.grids import load_endpoints, save_grid_images
from diffusion_diagnostics.workflow import load_sampling_model, run_rule


def main(snakemake):
    settings, wildcards = snakemake.params.settings, snakemake.wildcards
    # DDIM's grids have their own clipping: clipping x0 makes fewer DDIM steps another map (ddim_fidelity).
    clip_x0 = settings["ddim"]["clip_x0"] if wildcards.sampler == "ddim" else settings["clip_x0"]
    diffusion, options = load_sampling_model(
        snakemake, clip_x0=clip_x0, variance_type=settings["variance_type"]
    )
    z0, z1 = load_endpoints(snakemake.input.endpoints)
    logging.info(
        "%s %s grid (%s per-step noise): %d rows x %d columns",
        wildcards.sampler,
        wildcards.method,
        wildcards.noise,
        len(z0),
        settings["steps"],
    )
    if wildcards.sampler == "ddim":
        sampler = Sampler("ddim", settings["ddim"]["num_steps"], settings["ddim"]["eta"], options=options)
    else:
        sampler = Sampler(wildcards.sampler, options=options)
    grid = interpolation_grid(
        diffusion,
        z0,
        z1,
        settings["steps"],
        sampler,
        wildcards.method,
        settings["batch_size"],
        generator=torch.Generator(diffusion.device).manual_seed(settings["sampling_seed"]),
        shared_noise=wildcards.noise == "shared",
    )
    # The PNG and the judge see digits: the model's images brought back to 28 x 28.
    save_grid_images(snakemake.output.images, to_digit_size(grid, snakemake.params.image_fit))


run_rule(main, snakemake)  # noqa: F821
