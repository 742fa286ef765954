"""Rule plot_timestep_loss_snr: the three errors and the bound's terms per bucket against log-SNR."""

import json

from diffusion_diagnostics.analysis import read_timestep_loss_csv
from diffusion_diagnostics.plots import plot_timestep_loss_snr
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    with open(snakemake.input.nll) as handle:
        bound = json.load(handle)
    plot_timestep_loss_snr(read_timestep_loss_csv(snakemake.input.csv), bound, snakemake.output.png)


run_rule(main, snakemake)  # noqa: F821
