"""Rule noise_endpoints: the seeded noise pairs (z0, z1) that one interpolation grid starts from."""

from diffusion_diagnostics.interpolation import draw_endpoints, save_endpoints
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    z0, z1 = draw_endpoints(snakemake.params.n, tuple(snakemake.params.shape), snakemake.params.seed)
    save_endpoints(snakemake.output.endpoints, z0, z1, snakemake.params.seed)


run_rule(main, snakemake)  # noqa: F821
