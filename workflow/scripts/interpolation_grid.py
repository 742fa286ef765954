"""Rules interpolation_grid_ddpm / _ddim: a decoded interpolation grid as a PNG."""

from diffusion_diagnostics.grids import load_grid_images, save_grid
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    save_grid(load_grid_images(snakemake.input.images), snakemake.output.grid)


run_rule(main, snakemake)  # noqa: F821
