"""Rule plot_timestep_loss: the per-timestep loss CSV as a bar chart."""

from diffusion_diagnostics.files import read_csv
from diffusion_diagnostics.plots import plot_timestep_loss
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    plot_timestep_loss(read_csv(snakemake.input.csv), snakemake.output.png)


run_rule(main, snakemake)  # noqa: F821
