"""What a ``checkpoint:`` value names, from the config and small files alone (no model is built):
the Snakefile plans the DAG from it and describes each model in the report's captions.

A source is ``train`` (the workflow trains the model), a path (this package's checkpoint file or a
diffusers folder), ``hf:owner/name[@revision]`` (a Hugging Face Hub repository) or a dict naming an
``entry_point`` (the user's own network). :func:`.models.load_model` reads every kind.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

from .errors import DiagnosticsError

TRAIN = "train"
HUB_PREFIX = "hf:"
# The Hub's own rule for owner and repository names: ASCII letters, digits, '_', '.', '-'.
HUB_ID = re.compile(
    r"hf:(?P<owner>[A-Za-z0-9_.-]{1,96})/(?P<name>[A-Za-z0-9_.-]{1,96})(?:@(?P<revision>[A-Za-z0-9_./-]+))?"
)
# What diffusers' DDPMScheduler and DDIMScheduler take when a config leaves a key out.
SCHEDULER_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
}


def is_hub_id(source) -> bool:
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_id(hub_id: str) -> tuple[str, str | None]:
    """``hf:owner/name[@revision]`` -> ("owner/name", revision or None)."""
    match = HUB_ID.fullmatch(hub_id)
    # The Hub refuses "--" and ".." in names, which keeps hub_folder_name's parts apart.
    if match is None or any(bad in match["owner"] + "/" + match["name"] for bad in ("--", "..")):
        raise DiagnosticsError(
            f"model {hub_id}: not a Hugging Face Hub id; write hf:owner/name or hf:owner/name@revision"
        )
    return f"{match['owner']}/{match['name']}", match["revision"]


def hub_folder_name(hub_id: str) -> str:
    """The folder a hub id is downloaded into: ``owner--name``, or ``owner--name--revision`` with
    the revision's '/' written as '-'."""
    repo_id, revision = parse_hub_id(hub_id)
    name = repo_id.replace("/", "--")
    return f"{name}--{revision.replace('/', '-')}" if revision else name


def schedule_summary(
    timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    prediction_type: str,
    variance_type: str,
    trained: bool = False,
) -> str:
    """ "linear β 0.0001 → 0.02, T = 1000, epsilon, fixed_small": a process in one line."""
    if trained:
        schedule = "trained betas"
    elif beta_schedule == "squaredcos_cap_v2":
        schedule = "squaredcos_cap_v2 β"  # the cosine schedule: its βs do not depend on the two
    else:
        schedule = f"{beta_schedule} β {beta_start:g} → {beta_end:g}"
    return f"{schedule}, T = {timesteps}, {prediction_type}, {variance_type}"


def describe_source(source: str | Mapping, diffusion_settings: Mapping) -> str:
    """One line saying what kind of model ``source`` is and its process, from the config and the
    small files beside the weights; ``diffusion_settings`` is what a trained model learns.

    A hub model is described by its id alone: its configs arrive with the download, after the
    workflow has been planned, and the description must not change from one run to the next.
    """
    if isinstance(source, Mapping):
        settings = {**SCHEDULER_DEFAULTS, **source.get("schedule", {})}
        return f"own network {source['entry_point']} with weights {source['weights']}, {_summary(settings)}"
    if source == TRAIN:
        settings = dict(diffusion_settings)
        return f"trained by the workflow, {schedule_summary(**settings)}"
    if is_hub_id(source):
        return f"diffusers model {source} from the Hugging Face Hub (its process: results' model.json)"
    path = Path(source)
    if path.is_dir():
        layout, config = _diffusers_scheduler_config(path)
        return f"diffusers folder {path} ({layout} layout), {_summary({**SCHEDULER_DEFAULTS, **config})}"
    settings = _checkpoint_diffusion_config(path)
    return f"checkpoint {path}" + (f", {schedule_summary(**settings)}" if settings else "")


def _summary(scheduler_config: Mapping) -> str:
    return schedule_summary(
        scheduler_config["num_train_timesteps"],
        scheduler_config["beta_start"],
        scheduler_config["beta_end"],
        scheduler_config["beta_schedule"],
        scheduler_config["prediction_type"],
        # diffusers keeps fixed_small_log in log space for its interpolation: the same variance.
        str(scheduler_config["variance_type"]).removesuffix("_log"),
        trained=scheduler_config.get("trained_betas") is not None,
    )


def _diffusers_scheduler_config(folder: Path) -> tuple[str, dict]:
    for layout, path in (("pipeline", folder / "scheduler" / "scheduler_config.json"),
                         ("flat", folder / "scheduler_config.json")):  # fmt: skip
        if path.is_file():
            try:
                return layout, json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise DiagnosticsError(f"model {path}: not a readable JSON file ({error})") from None
    return "unknown", {}


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads the plain values of a torch.save file without torch: every tensor and torch object
    becomes None, and nothing the file names is imported or run."""

    def find_class(self, module, name):
        return _nothing

    def persistent_load(self, pid):
        return None


def _nothing(*args, **kwargs):
    return None


def _checkpoint_diffusion_config(path: Path) -> dict | None:
    """The process of this package's checkpoint file, its defaults filled in (DiffusionProcess's);
    None for a file that is not one (the rule that loads it then says what is wrong)."""
    defaults = {
        "timesteps": 1000,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
        "variance_type": "fixed_small",
    }
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(member for member in archive.namelist() if member.endswith("/data.pkl"))
            payload = _PlainDataUnpickler(archive.open(name)).load()
        given = payload["diffusion_config"]
    except Exception:  # noqa: BLE001 - not ours, or damaged: arbitrary bytes fail in arbitrary ways
        return None
    settings = {key: given.get(key, value) for key, value in defaults.items()}
    return {**settings, "trained": given.get("trained_betas") is not None}
