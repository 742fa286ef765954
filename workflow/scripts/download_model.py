"""Rule download_model: a Hugging Face Hub model's configs and weights, fetched once into its folder."""

import logging

from diffusion_diagnostics.models import download_hub_model
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    folder = download_hub_model(snakemake.params.hub_id, snakemake.output.folder)
    logging.info("%s: %s", snakemake.params.hub_id, sorted(p.name for p in folder.rglob("*") if p.is_file()))


run_rule(main, snakemake)  # noqa: F821
