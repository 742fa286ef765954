"""Rule ddim_fidelity: the DDIM grid at several step counts against the finest, and held-out digits
inverted to noise and decoded back."""

import logging

from diffusion_diagnostics.fidelity import ddim_step_sweep, inversion_reconstruction
from diffusion_diagnostics.files import write_csv
from diffusion_diagnostics.interpolation import load_endpoints
from diffusion_diagnostics.plots import plot_ddim_fidelity
from diffusion_diagnostics.workflow import digits_for, load_sampling_model, run_rule


def main(snakemake):
    settings, interpolation = snakemake.params.settings, snakemake.params.interpolation
    diffusion, options = load_sampling_model(snakemake, clip_x0=interpolation["clip_x0"])
    logging.info("fidelity: DDIM grids and inversion at S = %s", settings["num_steps"])
    z0, z1 = load_endpoints(snakemake.input.endpoints)
    sweep = ddim_step_sweep(
        diffusion,
        z0,
        z1,
        interpolation["steps"],
        settings["num_steps"],
        interpolation["method"],
        interpolation["batch_size"],
        options=options,
    )
    heldout = digits_for(diffusion, snakemake.input.heldout, snakemake.params.image_fit).tensors[0]
    heldout = heldout[: settings["inversion_images"]]
    inversion = inversion_reconstruction(
        diffusion, heldout, settings["num_steps"], interpolation["batch_size"], options=options
    )
    for row in sweep + inversion:
        logging.info("%s", row)
    write_csv(sweep, snakemake.output.csv)
    plot_ddim_fidelity(sweep, snakemake.output.png)
    write_csv(inversion, snakemake.output.inversion)


run_rule(main, snakemake)  # noqa: F821
