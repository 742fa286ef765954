"""Rules interpolation_grid_ddpm / _ddim: decode the interpolated endpoint noise into a PNG grid."""

import logging

import torch

from diffusion_diagnostics.checkpoint import load_checkpoint
from diffusion_diagnostics.interpolation import interpolation_grid, load_endpoints, save_grid
from diffusion_diagnostics.runtime import resolve_device
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    settings = snakemake.params.settings
    device = resolve_device(snakemake.params.device)
    diffusion, _ = load_checkpoint(snakemake.input.model, device)
    diffusion.clip_x0 = settings["clip_x0"]
    z0, z1 = load_endpoints(snakemake.input.endpoints)
    logging.info(
        "%s grid: %d rows x %d columns on %s", snakemake.params.sampler, len(z0), settings["steps"], device
    )
    images = interpolation_grid(
        diffusion,
        z0,
        z1,
        steps=settings["steps"],
        sampler=snakemake.params.sampler,
        ddim_steps=settings["ddim"]["num_steps"],
        eta=settings["ddim"]["eta"],
        interpolation=settings["method"],
        batch_size=settings["batch_size"],
        generator=torch.Generator(device).manual_seed(settings["sampling_seed"]),
    )
    save_grid(images, settings["steps"], snakemake.output.grid)


run_rule(main, snakemake)  # noqa: F821
