"""Rule timestep_loss: the model's errors per timestep bucket on held-out digits (CSV) and its
variational bound in bits per dimension (JSON), from the same forward passes."""

import json
import logging

from torch.utils.data import DataLoader

from diffusion_diagnostics.analysis import timestep_loss_table, write_timestep_loss_csv
from diffusion_diagnostics.files import read_json, write_json
from diffusion_diagnostics.workflow import digits_for, load_rule_model, run_rule


def split_description(manifest_path: str) -> dict:
    """Which digits the bound is of: the held-out split, as the data manifest describes it."""
    manifest = read_json(manifest_path)
    return {
        "split": "heldout",
        "split_size": manifest["splits"]["heldout"],
        "split_selection": manifest["selection"]["heldout"],
        "data_source": manifest["source"],
    }


def main(snakemake):
    settings = snakemake.params.settings
    diffusion, _ = load_rule_model(snakemake)
    heldout = digits_for(diffusion, snakemake.input.heldout, snakemake.params.image_fit)
    table = timestep_loss_table(
        diffusion,
        DataLoader(heldout, batch_size=settings["batch_size"], shuffle=False),
        num_batches=settings["num_batches"],
        buckets=settings["buckets"],
        sampling=settings["t_sampling"],
        seed=settings["seed"],
        exact_check_images=settings["exact_check_images"],
    )
    write_timestep_loss_csv(table, snakemake.output.csv)
    summary = {
        **table.bound.summary(),
        **split_description(snakemake.input.manifest),
        "model": snakemake.params.model_description,
    }
    write_json(summary, snakemake.output.nll)
    for row in table.rows():
        logging.info("%s", row)
    logging.info("variational bound: %s", json.dumps(summary))
    check = table.bound.exact_check
    if check is not None and not check.agrees:
        logging.warning(
            "the exact every-t bound of %d images differs from the estimate by %.4f bits/dim, "
            "more than twice their combined standard error %.4f",
            check.num_images,
            check.difference,
            check.combined_std_error,
        )


run_rule(main, snakemake)  # noqa: F821
