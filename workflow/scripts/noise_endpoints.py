"""Rule noise_endpoints: the seeded noise pairs (z0, z1) that one interpolation grid starts from, in
the model's sample shape."""

from diffusion_diagnostics.files import read_json
from diffusion_diagnostics.grids import draw_endpoints, save_endpoints
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    shape = tuple(read_json(snakemake.input.card)["sample_shape"])
    z0, z1 = draw_endpoints(snakemake.params.n, shape, snakemake.params.seed)
    save_endpoints(snakemake.output.endpoints, z0, z1, snakemake.params.seed)


run_rule(main, snakemake)  # noqa: F821
