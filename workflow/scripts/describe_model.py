"""Rule describe_model: what the model is (kind, process, sample shape, how digits reach it), as
model.json, which the other model rules read and the report shows."""

from diffusion_diagnostics.digits import check_fit
from diffusion_diagnostics.files import write_json
from diffusion_diagnostics.workflow import load_rule_model, run_rule


def main(snakemake):
    diffusion, info = load_rule_model(snakemake)
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
            "details": {
                key: value for key, value in info.items() if key not in ("description", "source", "path")
            },
        },
        snakemake.output.card,
    )


run_rule(main, snakemake)  # noqa: F821
