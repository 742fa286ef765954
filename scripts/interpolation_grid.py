"""Rules interpolation_grid_ddpm / _ddim: a decoded interpolation grid as a PNG."""

from diffusion_diagnostics.interpolation import load_grid_images, save_grid
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    images = load_grid_images(snakemake.input.images)
    save_grid(images.flatten(0, 1), images.shape[1], snakemake.output.grid)


run_rule(main, snakemake)  # noqa: F821
