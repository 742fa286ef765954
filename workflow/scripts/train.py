"""Rule train: train the ε-network when no checkpoint was given; write the best EMA model."""

import json
import logging

import torch

from diffusion_diagnostics.data import load_split
from diffusion_diagnostics.files import file_digest, read_csv
from diffusion_diagnostics.plots import plot_training_history
from diffusion_diagnostics.runtime import resolve_device
from diffusion_diagnostics.training import TrainConfig, train
from diffusion_diagnostics.workflow import run_rule


def main(snakemake):
    device = resolve_device(snakemake.params.device)
    logging.info("training on %s with %d CPU threads", device, torch.get_num_threads())
    summary = train(
        train_images=load_split(snakemake.input.train).tensors[0],
        validation_images=load_split(snakemake.input.validation).tensors[0],
        model_config=snakemake.params.model,
        diffusion_config=snakemake.params.diffusion,
        config=TrainConfig(**snakemake.params.train),
        checkpoint_path=snakemake.output.model,
        state_path=snakemake.params.state,
        history_path=snakemake.output.history,
        device=device,
        data_sha=file_digest(snakemake.input.train),
        snapshot_dir=snakemake.params.snapshots,
        buckets=snakemake.params.buckets,
    )
    plot_training_history(read_csv(snakemake.output.history), snakemake.output.curve)
    logging.info("done: %s", json.dumps(summary))


run_rule(main, snakemake)  # noqa: F821
