"""Rule download_mnist: fetch (or take from disk) MNIST, split it, write the splits and a manifest."""

import json
import logging

from diffusion_diagnostics.data import load_source, save_splits
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    data = snakemake.params.data
    splits = load_source(
        data["source"], data["root"], data["heldout_per_class"], data["seed"], data["mirrors"] or None
    )
    manifest = save_splits(splits, snakemake.params.out_dir, requested_source=data["source"])
    logging.info("data source %s; manifest:\n%s", splits.source, json.dumps(manifest, indent=2))


run_rule(main, snakemake)  # noqa: F821
