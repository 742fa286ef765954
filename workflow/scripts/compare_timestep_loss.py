"""Rule compare_timestep_loss: the per-timestep loss of every model of a sweep, one CSV and one plot."""

from diffusion_diagnostics.analysis import combine_timestep_loss_csvs
from diffusion_diagnostics.files import read_json, write_csv
from diffusion_diagnostics.plots import plot_timestep_loss_comparison
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    models = snakemake.params.models
    rows = combine_timestep_loss_csvs(dict(zip(models, snakemake.input.csvs, strict=True)))
    bounds = {model: read_json(path) for model, path in zip(models, snakemake.input.nlls, strict=True)}
    write_csv(rows, snakemake.output.csv)
    plot_timestep_loss_comparison(rows, snakemake.output.png, bounds)


run_rule(main, snakemake)  # noqa: F821
