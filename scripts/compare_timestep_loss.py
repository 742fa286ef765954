"""Rule compare_timestep_loss: the per-timestep loss of every model of a sweep, one CSV and one plot."""

from diffusion_diagnostics.analysis import combine_timestep_loss_csvs, write_timestep_loss_comparison_csv
from diffusion_diagnostics.plots import plot_timestep_loss_comparison
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    rows = combine_timestep_loss_csvs(dict(zip(snakemake.params.models, snakemake.input.csvs, strict=True)))
    write_timestep_loss_comparison_csv(rows, snakemake.output.csv)
    plot_timestep_loss_comparison(rows, snakemake.output.png)


run_rule(main, snakemake)  # noqa: F821
