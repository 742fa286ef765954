"""Rule trajectory: the measured checkpoints of a training run (rule trajectory_part's shares) as
tables, a heatmap, the bound against step, the samples, and the buckets that regress, stall or
collapse."""

import json
import logging

import torch

from diffusion_diagnostics.digits import to_digit_size
from diffusion_diagnostics.files import write_csv, write_json
from diffusion_diagnostics.grids import save_grid
from diffusion_diagnostics.plots import plot_trajectory_bound, plot_trajectory_heatmap
from diffusion_diagnostics.trajectory import bound_rows, findings, read_measured, trajectory_rows
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    measured = read_measured(snakemake.input.parts)
    logging.info("trajectory of %d checkpoints from %d jobs", len(measured), len(snakemake.input.parts))
    rows, bounds = trajectory_rows(measured), bound_rows(measured)
    write_csv(rows, snakemake.output.csv)
    write_csv(bounds, snakemake.output.bound_csv)
    found = findings(measured)
    for kind in ("regressing", "stalled", "collapsed"):
        for item in found[kind]:
            logging.warning("%s: %s", kind, json.dumps(item))
    write_json(found, snakemake.output.findings)
    plot_trajectory_heatmap(rows, snakemake.output.heatmap)
    plot_trajectory_bound(rows, bounds, snakemake.output.bound)
    samples = torch.stack([to_digit_size(one.samples, snakemake.params.image_fit) for one in measured])
    save_grid(samples, snakemake.output.samples)


run_rule(main, snakemake)  # noqa: F821
