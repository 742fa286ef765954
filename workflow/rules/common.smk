import os
import re
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("8.20")

# This checkout's package (src/ beside workflow/), for this process and, through PYTHONPATH, for
# every job (also inside --sdm conda environments and cluster jobs, which inherit the environment):
# code and workflow always match, also when the workflow is used as a module of another.
SRC = str(Path(workflow.current_basedir).resolve().parents[1] / "src")
sys.path.insert(0, SRC)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
)

from diffusion_diagnostics.config import check_config
from diffusion_diagnostics.errors import DiagnosticsError
from diffusion_diagnostics.sources import (
    TRAIN,
    check_source,
    check_trajectory,
    describe_source,
    hub_folder_name,
    is_hub_id,
)

# A violation stops the run with one line naming the key (no traceback): see check_config.
try:
    check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except DiagnosticsError as error:
    sys.exit(str(error))


# Every rule runs in the environment this file describes when --sdm conda is given.
CONDA_ENV = "../envs/environment.yaml"
# A sweep (config `models`) puts each model's files under results/<model>/ (logs under
# logs/<model>/) through the {model} wildcard; with one model (no `models`, the default) the paths
# are the plain ones, results/timestep_loss.csv and so on. Rules write their per-model paths as
# f"results/{PER_MODEL}name", which is one of the two.
MODELS = {name: entry or {} for name, entry in (config.get("models") or {}).items()}
SWEEP = bool(MODELS)
PER_MODEL = "{model}/" if SWEEP else ""
# A sweep's models, one subcategory each in `snakemake --report`.
REPORT_SUBCATEGORY = "{model}" if SWEEP else None


def configured_sources():
    """Where each model's `checkpoint` is set (for error lines) and what it names: "train", a
    path, hf:owner/name[@revision] or an entry-point dict. In a sweep the top-level one is unused
    and a model without a checkpoint of its own is trained."""
    if not SWEEP:
        return {"checkpoint": config["checkpoint"]}
    return {
        f"models.{name}.checkpoint": entry.get("checkpoint", TRAIN)
        for name, entry in MODELS.items()
    }


# A path that does not exist, or a malformed hub id, stops the run before anything runs: one line.
try:
    for where, source in configured_sources().items():
        check_source(source, where)
except DiagnosticsError as error:
    sys.exit(f"config error at {error}")
# Hub models, by the folder under resources/models/ that the download_model rule fills.
HUB_MODELS = {
    hub_folder_name(source): source
    for source in configured_sources().values()
    if is_hub_id(source)
}


wildcard_constraints:
    # Exactly the configured names, so that results/compare/ or results/noise/ is never taken for
    # a model (with one model no rule has the wildcard, and "(?!)" matches nothing).
    model="|".join(re.escape(name) for name in MODELS) or "(?!)",
    hub_folder="|".join(re.escape(name) for name in HUB_MODELS) or "(?!)",


TRAINED_CHECKPOINT = f"results/{PER_MODEL}train/best_model.pt"
DATA = {
    "train": "resources/mnist/train.pt",
    "validation": "resources/mnist/validation.pt",
    "heldout": "resources/mnist/heldout.pt",
    "manifest": "resources/mnist/manifest.json",
}
# The interpolation the two pictures interp.png and interp_ddim.png show.
GRID_METHOD = config["interpolation"]["method"]
# The digit classifier that judges samples: one for all models, trained on the training split.
CLASSIFIER = "results/classifier/classifier.pt"
# What the model rules read about their model: its kind, process, sample shape (model.json).
MODEL_CARD = f"results/{PER_MODEL}model.json"
# Where training keeps snapshots of its weights, the trajectory of a trained model.
SNAPSHOTS = f"results/{PER_MODEL}train/snapshots"


def trajectory_plan():
    """The checkpoints a trajectory follows, or None. trajectory.checkpoints names them (a folder or
    a glob, which must name something before anything runs); else they are the snapshots of
    training, where the one model is trained with snapshot_every > 0."""
    spec = config["trajectory"]["checkpoints"]
    if spec is not None:
        try:
            return {"checkpoints": spec, "inputs": check_trajectory(spec)}
        except DiagnosticsError as error:
            sys.exit(f"config error at {error}")
    if (
        not SWEEP
        and config["checkpoint"] == TRAIN
        and config["train"]["snapshot_every"] > 0
    ):
        return {"checkpoints": SNAPSHOTS, "inputs": [TRAINED_CHECKPOINT]}
    return None


TRAJECTORY = trajectory_plan()
TRAJECTORY_OUTPUTS = (
    [
        "results/trajectory/trajectory.csv",
        "results/trajectory/heatmap.png",
        "results/trajectory/bound.png",
        "results/trajectory/samples.png",
        "results/trajectory/findings.json",
    ]
    if TRAJECTORY is not None
    else []
)
# How every sampling rule runs its sampler (SamplingOptions; clipping is set per rule).
SAMPLING = {
    key: config[key]
    for key in (
        "precision",
        "timestep_spacing",
        "steps_offset",
        "use_clipped_model_output",
    )
}


def model_source(wildcards):
    """What this model's `checkpoint` names (see configured_sources)."""
    if not SWEEP:
        return config["checkpoint"]
    return MODELS[wildcards.model].get("checkpoint", TRAIN)


def model_input(wildcards):
    """The file or folder the model rules read: a given one is used as given, never written; a
    hub model's download; the train rule's model for `train`."""
    source = model_source(wildcards)
    if isinstance(source, dict):
        return source["weights"]
    if source == TRAIN:
        return TRAINED_CHECKPOINT.format(model=getattr(wildcards, "model", ""))
    if is_hub_id(source):
        return f"resources/models/{hub_folder_name(source)}"
    return source


def model_spec(wildcards):
    """Params function: what load_model reads, the entry-point dict or the file or folder."""
    source = model_source(wildcards)
    return source if isinstance(source, dict) else model_input(wildcards)


def model_description(wildcards):
    """Params function: one line for the report's captions, the same from one run to the next."""
    return describe_source(
        model_source(wildcards), model_settings("diffusion")(wildcards)
    )


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
