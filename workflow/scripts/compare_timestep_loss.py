"""Rule compare_timestep_loss: the per-timestep loss of every model of a sweep, one CSV and one plot."""

import json

from diffusion_diagnostics.analysis import combine_timestep_loss_csvs, write_timestep_loss_comparison_csv
from diffusion_diagnostics.plots import plot_timestep_loss_comparison
from diffusion_diagnostics.workflow import run_rule


def read_bounds(models: list[str], paths: list[str]) -> dict[str, dict]:
    bounds = {}
    for model, path in zip(models, paths, strict=True):
        with open(path) as handle:
            bounds[model] = json.load(handle)
    return bounds


def main(snakemake):
    models = snakemake.params.models
    rows = combine_timestep_loss_csvs(dict(zip(models, snakemake.input.csvs, strict=True)))
    write_timestep_loss_comparison_csv(rows, snakemake.output.csv)
    plot_timestep_loss_comparison(rows, snakemake.output.png, read_bounds(models, snakemake.input.nlls))


run_rule(main, snakemake)  # noqa: F821
