import os
import re
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("8.20")

# This checkout's package, for this process and, through PYTHONPATH, for every job (also inside
# --sdm conda environments and cluster jobs, which inherit the environment): code and workflow
# always match.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
)

from diffusion_diagnostics.config import check_config
from diffusion_diagnostics.errors import DiagnosticsError

# A violation stops the run with one line naming the key (no traceback): see check_config.
try:
    check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except DiagnosticsError as error:
    sys.exit(str(error))


# Every rule runs in the environment this file describes when --sdm conda is given.
CONDA_ENV = "../../environment.yml"
# A sweep (config `models`) puts each model's files under results/<model>/ (logs under
# logs/<model>/) through the {model} wildcard; with one model (no `models`, the default) the paths
# are the plain ones, results/timestep_loss.csv and so on. Rules write their per-model paths as
# f"results/{PER_MODEL}name", which is one of the two.
MODELS = {name: entry or {} for name, entry in (config.get("models") or {}).items()}
SWEEP = bool(MODELS)
PER_MODEL = "{model}/" if SWEEP else ""
# A sweep's models, one subcategory each in `snakemake --report`.
REPORT_SUBCATEGORY = "{model}" if SWEEP else None

for given in [config["checkpoint"], *(m.get("checkpoint") for m in MODELS.values())]:
    # A folder would silently count as "no checkpoint" and trigger a training.
    if given and Path(given).exists() and not Path(given).is_file():
        sys.exit(f"config error at checkpoint: {given} is a folder, not a model file")


wildcard_constraints:
    # Exactly the configured names, so that results/compare/ or results/noise/ is never taken for
    # a model (with one model no rule has the wildcard, and "(?!)" matches nothing).
    model="|".join(re.escape(name) for name in MODELS) or "(?!)",


TRAINED_CHECKPOINT = f"results/{PER_MODEL}train/best_model.pt"
DATA = {
    "train": "resources/mnist/train.pt",
    "validation": "resources/mnist/validation.pt",
    "heldout": "resources/mnist/heldout.pt",
    "manifest": "resources/mnist/manifest.json",
}
# MNIST digits; the endpoints are drawn for this shape whatever the model.
SAMPLE_SHAPE = [1, 28, 28]
# The interpolation the two pictures interp.png and interp_ddim.png show.
GRID_METHOD = config["interpolation"]["method"]
# The digit classifier that judges samples: one for all models, trained on the training split.
CLASSIFIER = "results/classifier/classifier.pt"


def model_checkpoint(wildcards):
    """The model's given checkpoint when that file exists (used as given, never written), else
    the one the train rule makes for it."""
    if not SWEEP:
        given, trained = config["checkpoint"], TRAINED_CHECKPOINT
    else:
        # A sweep ignores the top-level `checkpoint`: a model without one of its own is trained.
        given = MODELS[wildcards.model].get("checkpoint")
        trained = TRAINED_CHECKPOINT.format(model=wildcards.model)
    return given if given and Path(given).is_file() else trained


def model_settings(section):
    """Params function: config[section] (model, diffusion or train), with a sweep model's own
    overrides of single keys merged over it."""

    def settings(wildcards):
        merged = dict(config[section])
        if SWEEP:
            merged.update(MODELS[wildcards.model].get(section, {}))
        return merged

    return settings


def for_each_model(*paths):
    """The per-model `paths` (written with PER_MODEL) of every model: the paths themselves with one model."""
    return expand(paths, model=list(MODELS)) if SWEEP else list(paths)


# Built by `all` besides the per-model files: a sweep's comparison of the models.
COMPARISON = (
    ["results/compare/timestep_loss.csv", "results/compare/timestep_loss.png"]
    if SWEEP
    else []
)


def benchmark_file(rule_name):
    return f"results/benchmarks/{rule_name}.tsv"
