"""Rule compare_samplers: the sampler tables of every model of a sweep, one CSV and one figure."""

from diffusion_diagnostics.files import read_csv, write_csv
from diffusion_diagnostics.plots import plot_sampler_comparison
from diffusion_diagnostics.sampler_table import SAMPLER_COLUMNS
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    tables = {
        model: read_csv(path)
        for model, path in zip(snakemake.params.models, snakemake.input.csvs, strict=True)
    }
    rows = [{"model": model, **row} for model, table in tables.items() for row in table]
    write_csv(rows, snakemake.output.csv, ["model", *SAMPLER_COLUMNS])
    plot_sampler_comparison(tables, snakemake.output.png)


run_rule(main, snakemake)  # noqa: F821
