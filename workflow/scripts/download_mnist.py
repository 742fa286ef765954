"""Rule download_mnist: fetch (or take from disk) MNIST, split it, write the splits and a manifest."""

import json
import logging

from diffusion_diagnostics.data import load_source, save_splits
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    data = snakemake.params.data
    splits = load_source(
        data["source"],
        data["root"],
        heldout_per_class=data["heldout_per_class"],
        seed=data["seed"],
        mirrors=data["mirrors"] or None,
        validation_size=data["validation_size"],
    )
    manifest = save_splits(splits, snakemake.params.out_dir, requested_source=data["source"])
    logging.info(
        "data source %s (%s); manifest:\n%s", splits.source, splits.how, json.dumps(manifest, indent=2)
    )


run_rule(main, snakemake)  # noqa: F821
