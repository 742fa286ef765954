"""Rule sample_quality: N DDIM samples (quality.eta: 0 deterministic, 1 ancestral) judged by the
classifier against real held-out digits (Fréchet distance, precision, recall, density, coverage,
confidence, classes), with real training digits (the floor) and uniform noise (the ceiling) in the
same table."""

import logging

from diffusion_diagnostics.classifier import load_classifier
from diffusion_diagnostics.data import load_split
from diffusion_diagnostics.decoding import Sampler
from diffusion_diagnostics.digits import to_digit_size
from diffusion_diagnostics.files import write_csv, write_json
from diffusion_diagnostics.grids import save_grid, tile_rows
from diffusion_diagnostics.plots import plot_sample_quality
from diffusion_diagnostics.quality import (
    check_neighbour_counts,
    draw_samples,
    sample_quality_rows,
)
from diffusion_diagnostics.workflow import load_sampling_model, run_rule

PREVIEW_COLUMNS = 10  # samples.png: up to 10 rows of 10 samples
# The quality settings written beside the table in sample_quality.json.
RECORDED_SETTINGS = ("num_samples", "ddim_steps", "eta", "clip_x0", "seed", "confidence", "nearest_k")


def main(snakemake):
    settings = snakemake.params.settings
    diffusion, options = load_sampling_model(snakemake, clip_x0=settings["clip_x0"])
    classifier, _ = load_classifier(snakemake.input.classifier, diffusion.device)
    train = load_split(snakemake.input.train).tensors[0]
    heldout = load_split(snakemake.input.heldout).tensors[0]
    # Before sampling, the rule's long part: a nearest_k that a set cannot support fails at once.
    check_neighbour_counts(
        settings["nearest_k"], {"the samples": settings["num_samples"], "the held-out digits": len(heldout)}
    )
    sampler = Sampler("ddim", settings["ddim_steps"], settings["eta"], options=options)
    samples = draw_samples(
        diffusion, settings["num_samples"], sampler, settings["batch_size"], settings["seed"]
    )
    # The judge reads digits: the model's images brought back to 28 x 28.
    samples = to_digit_size(samples, snakemake.params.image_fit)
    rows = sample_quality_rows(
        classifier,
        samples,
        train,
        heldout,
        seed=settings["seed"],
        threshold=settings["confidence"],
        nearest_k=settings["nearest_k"],
    )
    for row in rows:
        logging.info("%s", row)
    write_csv(rows, snakemake.output.csv)
    # The settings as top-level keys, the table under rows.
    recorded = {key: settings[key] for key in RECORDED_SETTINGS}
    write_json(
        {
            "model": str(snakemake.input.model),
            "sampling": snakemake.params.sampling,
            **recorded,
            "rows": rows,
        },
        snakemake.output.json,
    )
    plot_sample_quality(rows, snakemake.output.png)
    save_grid(tile_rows(samples, PREVIEW_COLUMNS, PREVIEW_COLUMNS), snakemake.output.samples)


run_rule(main, snakemake)  # noqa: F821
