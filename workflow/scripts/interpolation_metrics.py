"""Rule interpolation_metrics: smoothness, on-manifold rate and label changes of every decoded grid."""

from diffusion_diagnostics.classifier import load_classifier
from diffusion_diagnostics.files import write_csv
from diffusion_diagnostics.grids import load_grid_images
from diffusion_diagnostics.plots import plot_interpolation_metrics
from diffusion_diagnostics.quality import interpolation_row_metrics
from diffusion_diagnostics.runtime import resolve_device
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    classifier, _ = load_classifier(snakemake.input.classifier, resolve_device(snakemake.params.device))
    rows = []
    for variant, path in zip(snakemake.params.variants, snakemake.input.grids, strict=True):
        sampler, method, noise = variant.split("-")
        for row in interpolation_row_metrics(load_grid_images(path), classifier, snakemake.params.confidence):
            rows.append({"variant": variant, "sampler": sampler, "method": method, "noise": noise, **row})
    write_csv(rows, snakemake.output.csv)
    plot_interpolation_metrics(rows, snakemake.output.png)


run_rule(main, snakemake)  # noqa: F821
