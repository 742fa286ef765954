import os
from pathlib import Path

from jsonschema import ValidationError
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("8.20")


def validate_config():
    """Schema-check the config; a violation becomes one line that names the key."""
    try:
        validate(config, schema="../schemas/config.schema.yaml")
    except WorkflowError as error:
        cause = error.__context__
        if not isinstance(cause, ValidationError):
            raise
        key = ".".join(str(part) for part in cause.absolute_path) or "(top level)"
        raise WorkflowError(
            f"config error at {key}: {cause.message}. "
            "See config.yaml for each key's meaning and allowed values."
        ) from None


validate_config()


# Every rule runs in the environment this file describes when --sdm conda is given.
CONDA_ENV = "../../environment.yml"
# The scripts import the package from this checkout (also inside --sdm conda environments and
# cluster jobs, which inherit the environment), so code and workflow always match.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        filter(
            None, [str(Path(workflow.basedir) / "src"), os.environ.get("PYTHONPATH")]
        )
    )
)

TRAINED_CHECKPOINT = "results/train/best_model.pt"
DATA = {
    "train": "resources/mnist/train.pt",
    "heldout": "resources/mnist/heldout.pt",
    "manifest": "resources/mnist/manifest.json",
}
# MNIST digits; the endpoints are drawn for this shape whatever the model.
SAMPLE_SHAPE = [1, 28, 28]


def model_checkpoint():
    """The user's checkpoint when it exists (used as given, never written), else the trained one."""
    configured = Path(config["checkpoint"])
    return str(configured) if configured.is_file() else TRAINED_CHECKPOINT


def benchmark_file(rule_name):
    return f"results/benchmarks/{rule_name}.tsv"
