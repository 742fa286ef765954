"""What a ``checkpoint:`` value names, from the config and small files alone (no model is built):
the Snakefile plans the DAG from it and describes each model in the report's captions.

A source is ``train`` (the workflow trains the model), a path (this package's checkpoint file or a
diffusers folder), ``hf:owner/name[@revision]`` (a Hugging Face Hub repository) or a dict naming an
``entry_point`` (the user's own network). :func:`.models.load_model` reads every kind.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import read_plain, read_process_config
from .errors import DiagnosticsError
from .lucidrains import is_trainer_file
from .process_config import ProcessConfig

TRAIN = "train"
HUB_PREFIX = "hf:"
# The Hub's own rule for owner and repository names: ASCII letters, digits, '_', '.', '-'.
HUB_ID = re.compile(
    r"hf:(?P<owner>[A-Za-z0-9_.-]{1,96})/(?P<name>[A-Za-z0-9_.-]{1,96})(?:@(?P<revision>[A-Za-z0-9_./-]+))?"
)


@dataclass(frozen=True)
class DiffusersFolder:
    """Where a folder written by diffusers' ``save_pretrained`` keeps its UNet (config.json and
    weights) and its scheduler config, in either layout."""

    path: Path
    layout: str
    unet: Path
    scheduler_config: Path


def locate_diffusers_folder(path: Path) -> DiffusersFolder | None:
    """The layout of a diffusers folder: ``pipeline`` (``model_index.json``, ``unet/``,
    ``scheduler/``), ``flat`` (``config.json`` and ``scheduler_config.json`` side by side, as many
    hub repositories are) or None for neither. Only file names are looked at: reading the files is
    the loader's (.models)."""
    if (path / "model_index.json").is_file():
        return DiffusersFolder(path, "pipeline", path / "unet", path / "scheduler" / "scheduler_config.json")
    if (path / "config.json").is_file() and (path / "scheduler_config.json").is_file():
        return DiffusersFolder(path, "flat", path, path / "scheduler_config.json")
    return None


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


def check_source(source: str | Mapping, where: str = "checkpoint") -> None:
    """Refuse, before anything runs, a source that names a path that does not exist (a file,
    folder or entry point's weights) or a malformed hub id; the error starts with ``where``, the
    config key that names it. A user's path is only looked at, never created."""
    if is_hub_id(source):
        try:
            parse_hub_id(source)
        except DiagnosticsError as error:
            raise DiagnosticsError(f"{where}: {error}") from None
        return
    paths = [source["weights"]] if isinstance(source, Mapping) else [] if source == TRAIN else [source]
    for path in paths:
        if not Path(path).exists():
            raise DiagnosticsError(
                f"{where}: {path} does not exist; point it at a checkpoint file, a diffusers folder "
                "or hf:owner/name, or set it to train to train a model with the workflow (results/train/)"
            )


def check_trajectory(spec: str, where: str = "trajectory.checkpoints") -> list[str]:
    """The paths a trajectory's ``spec`` names, before anything runs: a glob's matches (at least
    one), or the folder itself; else one error line naming ``where``. What each holds is read
    later, by the rule (.trajectory.find_checkpoints)."""
    if glob.has_magic(spec):
        matches = sorted(glob.glob(spec))
        if not matches:
            raise DiagnosticsError(f"{where}: {spec} matches no file or folder; check the pattern")
        return matches
    if not Path(spec).is_dir():
        raise DiagnosticsError(
            f"{where}: {spec} is not a folder; name the folder of a run's checkpoints or a glob of them"
        )
    return [spec]


def describe_source(source: str | Mapping, diffusion_settings: Mapping) -> str:
    """One line saying what kind of model ``source`` is and its process, from the config and the
    small files beside the weights; ``diffusion_settings`` is what a trained model learns.

    A hub model is described by its id alone: its configs arrive with the download, after the
    workflow has been planned, and the description must not change from one run to the next.
    """
    if isinstance(source, Mapping):
        trainer = read_plain(source["weights"]) if str(source["weights"]).endswith((".pt", ".pth")) else None
        if is_trainer_file(trainer):
            weights = source.get("trainer_weights", "ema")
            return (
                f"network {source['entry_point']} with the {weights} weights of denoising-diffusion-pytorch "
                f"Trainer file {source['weights']} (step {trainer['step']}; its process: results' model.json)"
            )
        schedule = source.get("schedule") or {}
        process = _summary(lambda: ProcessConfig.from_scheduler_config(schedule, "schedule"))
        return f"own network {source['entry_point']} with weights {source['weights']}, {process}"
    if source == TRAIN:
        return f"trained by the workflow, {_summary(lambda: ProcessConfig.from_dict(diffusion_settings))}"
    if is_hub_id(source):
        return f"diffusers model {source} from the Hugging Face Hub (its process: results' model.json)"
    path = Path(source)
    if path.is_dir():
        folder = locate_diffusers_folder(path)
        if folder is None:
            return f"diffusers folder {path} (unknown layout)"
        scheduler = folder.scheduler_config
        process = _summary(lambda: ProcessConfig.from_scheduler_config(_read_json(scheduler), "scheduler"))
        return f"diffusers folder {path} ({folder.layout} layout), {process}"
    plain = read_plain(path)
    if is_trainer_file(plain):
        step = plain["step"]
        return f"denoising-diffusion-pytorch Trainer file {path} (step {step}; its process: model.json)"
    config = read_process_config(path)
    return f"checkpoint {path}" + (f", {config.summary()}" if config else "")


def _summary(read_process) -> str:
    """The one line of the process ``read_process()`` gives; for files or settings that are not a
    process, a line saying so: planning goes on, and the first rule that loads the model stops
    with the reason."""
    try:
        return read_process().summary()
    except DiagnosticsError:
        return "a process the model rules refuse (describe_model's log says why)"


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DiagnosticsError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(content, dict):
        raise DiagnosticsError(f"{path}: holds a JSON {type(content).__name__}, not an object")
    return content
