"""Rule describe_model: what the model is (kind, process, sample shape, how digits reach it), and
whether its declared config fits its weights, as model.json, which the other model rules read and
the report shows."""

import logging

from diffusion_diagnostics.config_check import config_check, describe_finding, reading_errors
from diffusion_diagnostics.digits import check_fit
from diffusion_diagnostics.files import write_json
from diffusion_diagnostics.workflow import digits_for, load_rule_model, run_rule

CHECK_IMAGES = 64  # held-out digits the config check noises, one timestep each


def main(snakemake):
    diffusion, info = load_rule_model(snakemake)
    images = digits_for(diffusion, snakemake.input.heldout, snakemake.params.image_fit).tensors[0]
    errors = reading_errors(diffusion, images[:CHECK_IMAGES])
    findings = config_check(errors, diffusion)
    for finding in findings:
        logging.warning("%s", describe_finding(finding))
    if not findings:
        logging.info("the declared config fits the weights: %s", errors)
    write_json(
        {
            "description": info["description"],
            "checkpoint": snakemake.params.checkpoint,
            "source": info["source"],
            "path": info.get("path"),
            "process": diffusion.schedule_config(),
            "sample_shape": list(diffusion.sample_shape),
            "digits": check_fit(diffusion.sample_shape, snakemake.params.image_fit),
            "image_fit": snakemake.params.image_fit,
            "parameters": sum(parameter.numel() for parameter in diffusion.model.parameters()),
            "config_check": {"findings": findings, "relative_errors": errors},
            "details": {
                key: value for key, value in info.items() if key not in ("description", "source", "path")
            },
        },
        snakemake.output.card,
    )


run_rule(main, snakemake)  # noqa: F821
