"""Rule interpolate_real_digits: pairs of held-out digits DDIM-inverted to noise, interpolated, decoded."""

import logging

from diffusion_diagnostics.data import load_split
from diffusion_diagnostics.interpolation import interpolate_real, save_grid, select_pairs
from diffusion_diagnostics.workflow import load_sampling_model, run_rule


def main(snakemake):
    settings, steps = snakemake.params.settings, snakemake.params.steps
    diffusion, options = load_sampling_model(snakemake)
    images, labels = load_split(snakemake.input.heldout).tensors
    first, second = select_pairs(labels, settings["pairs"], settings["select"])
    logging.info("held-out pairs %s", list(zip(first, second, strict=True)))
    grid = interpolate_real(
        diffusion,
        images[first],
        images[second],
        steps,
        settings["num_steps"],
        settings["method"],
        snakemake.params.batch_size,
        options=options,
    )
    save_grid(grid, steps + 2, snakemake.output.grid)


run_rule(main, snakemake)  # noqa: F821
