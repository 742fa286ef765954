"""Rule sampler_table: every configured sampler at every step count on the model, judged against
the held-out digits, timed and counted; a table and its figure."""

import logging
from itertools import product

import torch

from diffusion_diagnostics.classifier import load_classifier
from diffusion_diagnostics.data import load_split
from diffusion_diagnostics.digits import to_digit_size
from diffusion_diagnostics.files import write_csv
from diffusion_diagnostics.plots import plot_sampler_table
from diffusion_diagnostics.quality import check_neighbour_counts, judge_images
from diffusion_diagnostics.sampler_table import SAMPLER_COLUMNS, Cell, available_samplers, sampler_rows
from diffusion_diagnostics.workflow import load_sampling_model, run_rule


def main(snakemake):
    settings = snakemake.params.settings
    diffusion, _ = load_sampling_model(snakemake, clip_x0=False)
    classifier, _ = load_classifier(snakemake.input.classifier, diffusion.device)
    heldout = load_split(snakemake.input.heldout).tensors[0]
    nearest_k = snakemake.params.nearest_k
    check_neighbour_counts(
        nearest_k, {"the samples": settings["num_samples"], "the held-out digits": len(heldout)}
    )
    samplers = available_samplers(settings["samplers"])
    cells = [
        Cell(sampler, steps, settings["spacing"]) for sampler, steps in product(samplers, settings["steps"])
    ]
    noise = torch.randn(
        (settings["num_samples"], *diffusion.sample_shape),
        generator=torch.Generator().manual_seed(settings["seed"]),
    ).to(diffusion.device)
    fit = snakemake.params.image_fit

    def judge(images):
        return judge_images(classifier, to_digit_size(images, fit))

    rows = sampler_rows(
        diffusion,
        judge,
        judge_images(classifier, heldout),
        cells,
        noise,
        reference_steps=settings["reference_steps"],
        batch_size=settings["batch_size"],
        seed=settings["seed"],
        nearest_k=nearest_k,
    )
    for row in rows:
        logging.info(
            "%s",
            {key: row[key] for key in ("sampler", "steps", "nfe", "frechet_distance", "kid", "ode_rmse")},
        )
    write_csv(rows, snakemake.output.csv, SAMPLER_COLUMNS)
    plot_sampler_table(rows, snakemake.output.png)


run_rule(main, snakemake)  # noqa: F821
