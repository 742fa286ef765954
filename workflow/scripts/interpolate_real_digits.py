"""Rule interpolate_real_digits: pairs of held-out digits DDIM-inverted to noise, interpolated, decoded."""

import logging

from diffusion_diagnostics.decoding import Sampler
from diffusion_diagnostics.digits import to_digit_size
from diffusion_diagnostics.grids import save_grid
from diffusion_diagnostics.real_digits import interpolate_real, select_pairs
from diffusion_diagnostics.workflow import digits_for, load_sampling_model, run_rule


def main(snakemake):
    settings, steps = snakemake.params.settings, snakemake.params.steps
    diffusion, options = load_sampling_model(snakemake)
    images, labels = digits_for(diffusion, snakemake.input.heldout, snakemake.params.image_fit).tensors
    first, second = select_pairs(labels, settings["pairs"], settings["select"])
    logging.info("held-out pairs %s", list(zip(first, second, strict=True)))
    grid = interpolate_real(
        diffusion,
        images[first],
        images[second],
        steps,
        Sampler("ddim", settings["num_steps"], options=options),
        settings["method"],
        snakemake.params.batch_size,
    )
    save_grid(to_digit_size(grid, snakemake.params.image_fit), snakemake.output.grid)


run_rule(main, snakemake)  # noqa: F821
