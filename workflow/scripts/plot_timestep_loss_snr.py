"""Rule plot_timestep_loss_snr: the three errors and the bound's terms per bucket against log-SNR."""

from diffusion_diagnostics.files import read_csv, read_json
from diffusion_diagnostics.plots import plot_timestep_loss_snr
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    plot_timestep_loss_snr(
        read_csv(snakemake.input.csv), read_json(snakemake.input.nll), snakemake.output.png
    )


run_rule(main, snakemake)  # noqa: F821
