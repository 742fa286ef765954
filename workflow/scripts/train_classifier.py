"""Rule train_classifier: the digit classifier that judges samples, trained on the training split."""

import json
import logging

from diffusion_diagnostics.classifier import save_classifier, train_classifier
from diffusion_diagnostics.data import load_split
from diffusion_diagnostics.files import atomic_output
from diffusion_diagnostics.runtime import resolve_device
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    settings = snakemake.params.settings
    train, heldout = load_split(snakemake.input.train), load_split(snakemake.input.heldout)
    model, summary = train_classifier(
        *train.tensors,
        *heldout.tensors,
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        seed=settings["seed"],
        device=resolve_device(snakemake.params.device),
        progress=True,
    )
    logging.info("held-out accuracy %.4f on %d digits", summary["heldout_accuracy"], summary["heldout_size"])
    save_classifier(snakemake.output.model, model, summary)
    with atomic_output(snakemake.output.summary) as temporary:
        temporary.write_text(json.dumps(summary, indent=2) + "\n")


run_rule(main, snakemake)  # noqa: F821
