"""Rule sampler_table: every configured sampler at every step count and spacing on the model, judged
against the held-out digits, timed and counted, over several seeds; the table, its figure, the grid
of the same noises decoded by every cell, and the recommendation."""

import logging

from diffusion_diagnostics.classifier import load_classifier
from diffusion_diagnostics.data import load_split
from diffusion_diagnostics.digits import to_digit_size
from diffusion_diagnostics.files import write_csv, write_json
from diffusion_diagnostics.plots import plot_sampler_grid, plot_sampler_table
from diffusion_diagnostics.quality import check_neighbour_counts, judge_images
from diffusion_diagnostics.sampler_table import (
    SAMPLER_COLUMNS,
    available_samplers,
    floor_sets,
    sampler_cells,
    sampler_table,
    seeded_noises,
)
from diffusion_diagnostics.workflow import load_sampling_model, run_rule


def main(snakemake):
    settings = snakemake.params.settings
    diffusion, _ = load_sampling_model(snakemake, clip_x0=False)
    classifier, _ = load_classifier(snakemake.input.classifier, diffusion.device)
    train = load_split(snakemake.input.train).tensors[0]
    heldout = load_split(snakemake.input.heldout).tensors[0]
    n, nearest_k = settings["num_samples"], snakemake.params.nearest_k
    check_neighbour_counts(nearest_k, {"the samples": n, "the held-out digits": len(heldout)})
    cells = sampler_cells(
        diffusion, available_samplers(settings["samplers"]), settings["steps"], settings["spacings"]
    )
    noises = [
        noise.to(diffusion.device)
        for noise in seeded_noises(n, diffusion.sample_shape, settings["seed"], settings["seeds"])
    ]
    floors = [judge_images(classifier, digits) for digits in floor_sets(train, n, settings["seed"])]
    fit = snakemake.params.image_fit

    def judge(images):
        return judge_images(classifier, to_digit_size(images, fit))

    logging.info("%d cells, each from %d seed(s) of %d noises", len(cells), len(noises), n)
    table = sampler_table(
        diffusion,
        judge,
        judge_images(classifier, heldout),
        floors,
        cells,
        noises,
        reference_steps=settings["reference_steps"],
        batch_size=settings["batch_size"],
        seed=settings["seed"],
        nearest_k=nearest_k,
    )
    for row in table.rows:
        logging.info(
            "%s",
            {key: row[key] for key in ("sampler", "spacing", "nfe", "frechet_distance", "kid", "ode_rmse")},
        )
    recommendation = table.recommendation
    logging.info(
        "%s", recommendation["sentence"] if recommendation else "no cell has a finite Fréchet distance"
    )
    write_csv(table.rows, snakemake.output.csv, SAMPLER_COLUMNS)
    write_json({"recommendation": recommendation, "settings": settings}, snakemake.output.json)
    plot_sampler_table(table.rows, snakemake.output.png, recommendation)
    previews = {label: to_digit_size(images, fit) for label, images in table.previews.items()}
    plot_sampler_grid(previews, snakemake.output.grid)


run_rule(main, snakemake)  # noqa: F821
