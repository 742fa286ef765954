"""Rule timestep_loss: ε-MSE of the model per timestep bucket on held-out digits, as a CSV."""

import logging

from diffusion_diagnostics.analysis import timestep_loss_statistics, write_timestep_loss_csv
from diffusion_diagnostics.checkpoint import load_checkpoint
from diffusion_diagnostics.data import heldout_loader
from diffusion_diagnostics.runtime import resolve_device
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    settings = snakemake.params.settings
    diffusion, _ = load_checkpoint(snakemake.input.model, resolve_device(snakemake.params.device))
    statistics = timestep_loss_statistics(
        diffusion,
        heldout_loader(snakemake.input.heldout, settings["batch_size"]),
        num_batches=settings["num_batches"],
        buckets=settings["buckets"],
        sampling=settings["t_sampling"],
        seed=settings["seed"],
    )
    write_timestep_loss_csv(statistics, snakemake.output.csv)
    for row in statistics.rows():
        logging.info("%s", row)


run_rule(main, snakemake)  # noqa: F821
