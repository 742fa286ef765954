"""Rule timestep_loss: ε-MSE of the model per timestep bucket on held-out digits, as a CSV."""

import logging

from torch.utils.data import DataLoader

from diffusion_diagnostics.analysis import timestep_loss_statistics, write_timestep_loss_csv
from diffusion_diagnostics.workflow import digits_for, load_rule_model, run_rule


def main(snakemake):
    settings = snakemake.params.settings
    diffusion, _ = load_rule_model(snakemake)
    heldout = digits_for(diffusion, snakemake.input.heldout, snakemake.params.image_fit)
    statistics = timestep_loss_statistics(
        diffusion,
        DataLoader(heldout, batch_size=settings["batch_size"], shuffle=False),
        num_batches=settings["num_batches"],
        buckets=settings["buckets"],
        sampling=settings["t_sampling"],
        seed=settings["seed"],
    )
    write_timestep_loss_csv(statistics, snakemake.output.csv)
    for row in statistics.rows():
        logging.info("%s", row)


run_rule(main, snakemake)  # noqa: F821
