"""Rule train_classifier: the digit classifier that judges samples, trained on the training split."""

import logging

from diffusion_diagnostics.classifier import save_classifier, train_classifier
from diffusion_diagnostics.data import load_split
from diffusion_diagnostics.files import write_json
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
    write_json(summary, snakemake.output.summary)


run_rule(main, snakemake)  # noqa: F821
