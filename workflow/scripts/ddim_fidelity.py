"""Rule ddim_fidelity: the DDIM grid at several step counts against the finest, x0 clipped and not,
and held-out digits inverted to noise and decoded back both ways."""

import logging

from diffusion_diagnostics.decoding import Sampler
from diffusion_diagnostics.fidelity import ddim_step_sweep, inversion_reconstruction
from diffusion_diagnostics.files import write_csv
from diffusion_diagnostics.grids import load_endpoints
from diffusion_diagnostics.plots import plot_ddim_fidelity
from diffusion_diagnostics.workflow import digits_for, load_sampling_model, run_rule


def main(snakemake):
    settings, interpolation = snakemake.params.settings, snakemake.params.interpolation
    diffusion, options = load_sampling_model(snakemake)
    sampler = Sampler("ddim", options=options)  # at each step count of the sweep
    rows = settings["grid_rows"]
    logging.info("fidelity: %d grid rows and inversion at S = %s", rows, settings["num_steps"])
    z0, z1 = (endpoints[:rows] for endpoints in load_endpoints(snakemake.input.endpoints))
    sweep = ddim_step_sweep(
        diffusion,
        z0,
        z1,
        interpolation["steps"],
        settings["num_steps"],
        interpolation["method"],
        interpolation["batch_size"],
        sampler=sampler,
    )
    heldout = digits_for(diffusion, snakemake.input.heldout, snakemake.params.image_fit).tensors[0]
    heldout = heldout[: settings["inversion_images"]]
    inversion = inversion_reconstruction(
        diffusion, heldout, settings["num_steps"], interpolation["batch_size"], sampler=sampler
    )
    for row in sweep + inversion:
        logging.info("%s", row)
    write_csv(sweep, snakemake.output.csv)
    plot_ddim_fidelity(sweep, snakemake.output.png)
    write_csv(inversion, snakemake.output.inversion)


run_rule(main, snakemake)  # noqa: F821
