"""Every kind of model the diagnostics read, behind one entry point: :func:`load_model`.

What the source is decides how it is read, never a flag:

- a file: this package's own checkpoint (:func:`.checkpoint.load_checkpoint`);
- a folder written by diffusers' ``save_pretrained``, in the pipeline layout (``model_index.json``,
  ``unet/``, ``scheduler/``) or the flat one of many hub repositories (``config.json``, the weights
  and ``scheduler_config.json`` side by side);
- ``hf:owner/name`` or ``hf:owner/name@revision``: a Hugging Face Hub repository, downloaded once
  into a folder (:func:`download_hub_model`) and then read as the folder it is;
- a dict naming an ``entry_point`` ``package.module:function``: the user's own network, with its
  weights, its sample shape and its schedule.

diffusers and huggingface_hub are the optional ``diffusers`` extra, imported only when a folder or
a hub id is read. No weights go through pickle code execution: they are safetensors files or are
read with ``torch.load(weights_only=True)``, which is also how diffusers 0.42 reads ``.bin`` weights
(``diffusers.models.model_loading_utils.load_state_dict``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import lucidrains
from .checkpoint import load_checkpoint, read_plain, state_dict_mismatch
from .diffusion import DiffusionProcess
from .errors import DiagnosticsError, first_line
from .process_config import LEARNED_VARIANCES, SAMPLING_KEYS, SCHEDULER_KEYS, ProcessConfig
from .sources import TRAIN, DiffusersFolder, hub_folder_name, is_hub_id, locate_diffusers_folder, parse_hub_id

log = logging.getLogger(__name__)

INSTALL_EXTRA = 'pip install -e ".[diffusers]"'
TRAIN_INSTEAD = f"set checkpoint: {TRAIN} to train a model with the workflow"

HUB_ENDPOINT = "https://huggingface.co"
# What a model folder needs: configs and weights, not READMEs, images or other frameworks' weights.
HUB_FILES = ["*.json", "*.safetensors", "*.bin"]

PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
UNET_CLASS = "UNet2DModel"
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

ENTRY_KEYS = (
    "entry_point",
    "weights",
    "kwargs",
    "sample_shape",
    "schedule",
    "trainer_weights",
    "rescale_timesteps",
)
REQUIRED_ENTRY_KEYS = ("entry_point", "weights", "sample_shape")


def load_model(
    source: str | os.PathLike | Mapping,
    device: torch.device | str = "cpu",
    hub_root: str | os.PathLike = "resources/models",
) -> tuple[DiffusionProcess, dict]:
    """The model that ``source`` names, as a :class:`DiffusionProcess` in eval mode on ``device``.

    ``source``: a checkpoint file, a diffusers folder, ``hf:owner/name[@revision]`` (downloaded
    into ``hub_root``/:func:`hub_folder_name` unless already there) or a model entry dict (see
    :func:`load_entry_point`). Returns the process and an info dict: ``source`` ("checkpoint",
    "diffusers" or "entry_point"), ``path``, ``description`` (one line for logs and captions) and
    what is particular to the kind (a folder's ``layout`` and ``scheduler``, a checkpoint's
    ``training`` metadata, a hub model's ``hub_id``, a DDIM schedule's ``timestep_spacing`` and
    ``steps_offset``).
    """
    if isinstance(source, Mapping):
        return load_entry_point(source, device)
    if is_hub_id(source):
        folder = download_hub_model(source, Path(hub_root) / hub_folder_name(source))
        diffusion, info = load_diffusers_folder(folder, device)
        description = _describe(info["model"], f"{source}, {info['layout']} folder {folder}", diffusion)
        return diffusion, {**info, "hub_id": source, "description": description}
    path = Path(source)
    if path.is_dir():
        return load_diffusers_folder(path, device)
    if path.is_file():
        plain = read_plain(path)
        if lucidrains.is_trainer_file(plain):
            return load_trainer_file(path, device)
        if _is_bare_state_dict(plain):
            raise DiagnosticsError(_bare_state_dict_remedy(path, plain))
        return _load_own_checkpoint(path, device)
    raise DiagnosticsError(
        f"model {path}: no such file or folder; point checkpoint: at a checkpoint file, a diffusers "
        f"folder or hf:owner/name, or {TRAIN_INSTEAD}"
    )


# Keys of improved- and guided-diffusion's UNetModel, which their TrainLoop saves as a bare state dict.
OPENAI_UNET_KEYS = {"time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight"}


def _is_bare_state_dict(plain) -> bool:
    """A file of tensors only (read_plain gives each tensor as None): weights without a network."""
    return isinstance(plain, Mapping) and bool(plain) and all(value is None for value in plain.values())


def _bare_state_dict_remedy(path: Path, plain: Mapping) -> str:
    if OPENAI_UNET_KEYS <= set(plain):
        what, builder, section = (
            "a bare state dict of improved- or guided-diffusion's UNetModel (by its keys)",
            "its create_model",
            "improved- and guided-diffusion",
        )
    else:
        what, builder, section = (
            "a bare state dict",
            "the function that builds its network",
            "your own network",
        )
    return (
        f"checkpoint {path}: {what}, weights without their network or process; give it as the weights of "
        f"an entry naming {builder}, with its schedule (docs/your-model.md, {section})"
    )


def _describe(model: str, where: str, diffusion: DiffusionProcess) -> str:
    return f"{model} ({where}), {diffusion.describe()}"


def _load_own_checkpoint(path: Path, device: torch.device | str) -> tuple[DiffusionProcess, dict]:
    diffusion, training = load_checkpoint(path, device)
    info = {
        "source": "checkpoint",
        "path": str(path),
        "model": "diffusion-diagnostics UNet",
        "training": training,
    }
    return diffusion, {**info, "description": _describe(info["model"], f"checkpoint {path}", diffusion)}


# A Trainer file holds no image size: its network is read at the digits' size.
TRAINER_FILE_SAMPLE_SIZE = (28, 28)


def load_trainer_file(path: Path, device: torch.device | str = "cpu") -> tuple[DiffusionProcess, dict]:
    """A denoising-diffusion-pytorch Trainer file given on its own: its EMA ``Unet`` built with the
    arguments its weights' shapes tell (lucidrains.unet_arguments), at the digits' size. A Unet
    built with other arguments is one error line saying to give them in an entry."""
    payload = _read_torch_weights(path)
    has_ema = isinstance(payload.get("ema"), Mapping) and any(
        key.startswith("ema_model.") for key in payload["ema"]
    )
    checkpoint = lucidrains.read_trainer_checkpoint(
        payload, "ema" if has_ema else "online", f"weights {path}"
    )
    try:
        arguments = lucidrains.unet_arguments(checkpoint.network)
    except (KeyError, IndexError):
        arguments = None
    entry = {
        "entry_point": "denoising_diffusion_pytorch:Unet",
        "kwargs": arguments,
        "weights": str(path),
        "sample_shape": [arguments["channels"] if arguments else 3, *TRAINER_FILE_SAMPLE_SIZE],
        "trainer_weights": "ema" if has_ema else "online",
    }
    try:
        if arguments is None:
            raise DiagnosticsError("its weights are not a Unet's of a known shape")
        return load_entry_point(entry, device)
    except DiagnosticsError as error:
        raise DiagnosticsError(
            f"{path}: a denoising-diffusion-pytorch Trainer file whose Unet could not be built from its "
            f"weights alone ({first_line(str(error))}); give it as the weights of an entry with its Unet's "
            "arguments (docs/your-model.md, lucidrains' denoising-diffusion-pytorch)"
        ) from None


def _import_extra(module: str, purpose: str):
    """Import a module of the optional diffusers extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DiagnosticsError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed; install the diffusers "
            f"extra: {INSTALL_EXTRA}"
        ) from None


# --- the process, from diffusers' scheduler keys -------------------------------------------------


def _diffusion_process(
    network: nn.Module, settings: Mapping, sample_shape: tuple[int, ...], where: str
) -> DiffusionProcess:
    """The process of ``network`` with the schedule that diffusers' scheduler keys describe; keys
    left out take ProcessConfig's defaults. Every refusal names ``where``."""
    config = ProcessConfig.from_scheduler_config(settings, where)
    # The βs are computed here, from the config: a wrong count of trained_betas, a β outside (0, 1).
    try:
        return DiffusionProcess(network, config=config, sample_shape=sample_shape)
    except DiagnosticsError as error:
        raise DiagnosticsError(f"{where}: {error}") from None
    except (TypeError, ValueError, RuntimeError) as error:
        raise DiagnosticsError(f"{where}: a value of the wrong type ({first_line(error)})") from None


# --- diffusers folders --------------------------------------------------------------------------


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` called as ``model(x_t, t)``, returning the tensor it predicts."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        size = unet.config.sample_size
        self.sample_shape = (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t).sample


def load_diffusers_folder(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[DiffusionProcess, dict]:
    """A folder written by diffusers' ``save_pretrained`` (either layout), read offline.

    The UNet is built by diffusers' own ``UNet2DModel.from_pretrained``, the schedule from the
    scheduler config with the keys an older config lacks taking diffusers' defaults.
    """
    return read_diffusers_folder(find_diffusers_folder(Path(path)), device)


def read_diffusers_folder(
    folder: DiffusersFolder, device: torch.device | str = "cpu"
) -> tuple[DiffusionProcess, dict]:
    """The UNet and scheduler config that ``folder`` names, wherever they lie (a training run's
    ``checkpoint-<step>/`` keeps its UNets apart from the scheduler: .trajectory)."""
    diffusers = _import_extra("diffusers", f"model folder {folder.path} (a diffusers folder)")
    scheduler, settings = _scheduler_settings(diffusers, folder.scheduler_config)
    # What the process cannot honour is said before the UNet is read (its channels depend on it).
    variance_type = ProcessConfig.from_scheduler_config(settings, str(folder.scheduler_config)).variance_type
    network = DiffusersUNet(_load_unet(diffusers, folder, variance_type))
    diffusion = _diffusion_process(network, settings, network.sample_shape, str(folder.scheduler_config))
    info = {
        "source": "diffusers",
        "path": str(folder.path),
        "layout": folder.layout,
        "model": f"diffusers {UNET_CLASS}",
        "scheduler": scheduler,
    }
    if scheduler == "DDIMScheduler":
        info.update({key: settings[key] for key in SAMPLING_KEYS})
    info["description"] = _describe(info["model"], f"{folder.layout} folder {folder.path}", diffusion)
    return diffusion.to(device).eval(), info


def find_diffusers_folder(path: Path) -> DiffusersFolder:
    """Which of the two layouts ``path`` has (.sources.locate_diffusers_folder); anything else is
    one line saying what was expected."""
    folder = locate_diffusers_folder(path)
    trainer_files = sorted(path.glob("model-*.pt")) if folder is None else []
    if any(lucidrains.is_trainer_file(read_plain(file)) for file in trainer_files):
        raise DiagnosticsError(
            f"model folder {path}: a denoising-diffusion-pytorch results folder, not a diffusers one; point "
            f"checkpoint: at one of its Trainer files ({trainer_files[-1].name}, ...) or give one as the "
            "weights of an entry with its Unet's arguments"
        )
    if folder is None:
        raise DiagnosticsError(
            f"model folder {path}: neither a diffusers pipeline folder (model_index.json, unet/, scheduler/) "
            "nor a flat one (config.json, its weights and scheduler_config.json side by side); point "
            "checkpoint: at one of those, at a checkpoint file or at hf:owner/name"
        )
    if folder.layout == "pipeline":
        index = path / "model_index.json"
        _check_pipeline(_read_json(index, "the pipeline's index"), index)
    return folder


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DiagnosticsError(
            f"{path}: no such file; a diffusers folder keeps {what} there, so the folder is incomplete: "
            "copy or download it again"
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DiagnosticsError(
            f"{path}: not a readable JSON file ({first_line(error)}); it should hold {what}"
        ) from None
    if not isinstance(content, dict):
        raise DiagnosticsError(f"{path}: holds a JSON {type(content).__name__}, not the object of {what}")
    return content


def _check_pipeline(index: dict, path: Path) -> None:
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES:
        latent = next((key for key in ("vqvae", "vae") if key in index), None)
        kind = f" (a latent pipeline: it has a {latent})" if latent else ""
        raise DiagnosticsError(
            f"{path}: _class_name '{pipeline}'{kind} is not supported; the diagnostics read "
            f"unconditional pixel-space {' and '.join(PIPELINES)} folders"
        )
    unet_class = (index.get("unet") or [None, None])[-1]
    if unet_class != UNET_CLASS:
        raise DiagnosticsError(
            f"{path}: unet '{unet_class}' is not supported; the diagnostics read an unconditional "
            f"pixel-space {UNET_CLASS}"
        )


def _scheduler_settings(diffusers, path: Path) -> tuple[str, dict]:
    """The scheduler's class name and its config, every key of that class present."""
    config = _read_json(path, "the scheduler config")
    # A config without its class tag is read as DDPM's, the scheduler DDPM models are trained with.
    name = config.get("_class_name", "DDPMScheduler")
    if name not in SCHEDULERS:
        raise DiagnosticsError(
            f"{path}: _class_name '{name}' is not supported; the diagnostics read "
            f"{' and '.join(SCHEDULERS)} configs"
        )
    # diffusers' defaults come from a scheduler built with none: one built from this config would
    # refuse an unknown beta_schedule with a bare NotImplementedError before it could be named here.
    defaults = {
        key: value for key, value in getattr(diffusers, name)().config.items() if not key.startswith("_")
    }
    return name, {**defaults, **{key: value for key, value in config.items() if key in defaults}}


@dataclass(frozen=True)
class UNetWeights:
    """The weights of a UNet folder as diffusers writes them: one file, or shards with their
    index, of ``format`` safetensors or bin, and the ``variant`` (``fp16``, ...) of
    ``save_pretrained(variant=...)``, None for the plain name."""

    path: Path  # the weights file, or the shards' index
    format: str
    variant: str | None


def _weights_file(unet_folder: Path) -> UNetWeights:
    """The UNet's weights, plain before a variant and safetensors before bin, as diffusers picks."""
    for suffix in ("safetensors", "bin"):
        plain = [f"diffusion_pytorch_model.{suffix}", f"diffusion_pytorch_model.{suffix}.index.json"]
        for name in plain:
            if (unet_folder / name).is_file():
                return UNetWeights(unet_folder / name, suffix, None)
    for suffix in ("safetensors", "bin"):
        # diffusion_pytorch_model.<variant>.<suffix>, or a sharded variant's index
        # diffusion_pytorch_model.<suffix>.index.<variant>.json
        single = re.compile(rf"diffusion_pytorch_model\.(\w+)\.{suffix}")
        index = re.compile(rf"diffusion_pytorch_model\.{suffix}\.index\.(\w+)\.json")
        for path in sorted(unet_folder.iterdir()):
            match = single.fullmatch(path.name) or index.fullmatch(path.name)
            if match:
                return UNetWeights(path, suffix, match.group(1))
    raise DiagnosticsError(
        f"{unet_folder}: no weights beside config.json (expected {' or '.join(WEIGHTS_FILES)}, a variant "
        "such as diffusion_pytorch_model.fp16.safetensors, or shards with their index); copy the model's "
        "weights there or download the folder again"
    )


def _load_unet(diffusers, folder: DiffusersFolder, variance_type: str = "fixed_small") -> nn.Module:
    config_path = folder.unet / "config.json"
    unet_class = _read_json(config_path, "the UNet's config").get("_class_name", UNET_CLASS)
    if unet_class != UNET_CLASS:
        raise DiagnosticsError(
            f"{config_path}: _class_name '{unet_class}' is not supported (a conditional or latent "
            f"model); the diagnostics read an unconditional pixel-space {UNET_CLASS}"
        )
    found = _weights_file(folder.unet)
    weights = found.path
    if found.variant:
        log.warning("%s: the %s variant of the weights, read as float32", weights, found.variant)
    try:
        unet, loading = diffusers.UNet2DModel.from_pretrained(
            folder.unet,
            local_files_only=True,
            use_safetensors=found.format == "safetensors",
            variant=found.variant,
            # Upcast whatever the file holds (an fp16 variant): the samplers' arithmetic is float32.
            torch_dtype=torch.float32,
            output_loading_info=True,
            # Weights of the wrong shape are reported in `loading` with the rest, not raised mid-load.
            ignore_mismatched_sizes=True,
            # One loading path whether or not accelerate is installed (and no warning that it is not).
            low_cpu_mem_usage=False,
        )
    except (OSError, ValueError, RuntimeError, TypeError) as error:
        raise DiagnosticsError(
            f"{weights}: diffusers could not load it ({first_line(error)}); the file is corrupt, or holds "
            "objects other than tensors, refused since unpickling them could run code: download the "
            "folder again"
        ) from None
    detail = _loading_mismatch(loading)
    if detail:
        raise DiagnosticsError(
            f"{weights}: the weights do not fit {config_path} ({detail}); the folder mixes files of "
            "different models: download it again"
        )
    _check_unet_config(unet.config, config_path, variance_type)
    return unet


def _loading_mismatch(loading: dict) -> str:
    """What diffusers' loading info says kept the weights from fitting, or "" when they fit."""
    kinds = (
        ("missing", loading["missing_keys"]),
        ("unexpected", loading["unexpected_keys"]),
        ("wrong shape", [key for key, *_ in loading["mismatched_keys"]]),
    )
    return "; ".join(
        f"{what}: {', '.join(sorted(names)[:3])}{' …' if len(names) > 3 else ''}"
        for what, names in kinds
        if names
    )


def _check_unet_config(config: Mapping, path: Path, variance_type: str = "fixed_small") -> None:
    if config.get("sample_size") is None:
        # A fully convolutional UNet runs at any size, but its samples are only digits at the size
        # it was trained at, which nothing else in the folder records.
        raise DiagnosticsError(
            f"{path}: sample_size is not set, so the image size the model was trained at is unknown; "
            'add it to a copy of the folder (e.g. "sample_size": 28) and point checkpoint: at the copy'
        )
    for key in ("class_embed_type", "num_class_embeds"):
        if config.get(key) is not None:
            raise DiagnosticsError(
                f"{path}: {key} is set ({config[key]}), a class-conditional UNet; the diagnostics sample "
                "unconditional models, so analyse one without class embeddings"
            )
    channels_in, channels_out = config["in_channels"], config["out_channels"]
    learned_variance = variance_type in LEARNED_VARIANCES
    if learned_variance and channels_out != 2 * channels_in:
        raise DiagnosticsError(
            f"{path}: out_channels {channels_out}, but the scheduler's variance_type {variance_type} needs "
            f"2 × in_channels ({2 * channels_in}): a prediction and its variance; the UNet and the "
            "scheduler config are of different models"
        )
    if not learned_variance and channels_out != channels_in:
        learned = (
            " (2 × in_channels: a learned variance, which the scheduler's variance_type does not say)"
            if channels_out == 2 * channels_in
            else ""
        )
        raise DiagnosticsError(
            f"{path}: out_channels {channels_out} differs from in_channels {channels_in}{learned}; "
            "the diagnostics read networks that predict ε, v or x_0, and with variance_type "
            "learned_range or learned their variance"
        )


# --- Hugging Face Hub ids -----------------------------------------------------------------------


def download_hub_model(hub_id: str, destination: str | os.PathLike) -> Path:
    """Download the configs and weights of a Hub repository into ``destination``, once.

    A destination that exists is taken as that download, made before, and returned untouched. The
    files arrive in a temporary folder beside it, renamed when complete, so that a killed download
    never leaves part of a model under the final name. ``HF_ENDPOINT``, read at each call, points
    at a mirror of the Hub.
    """
    destination = Path(destination)
    if destination.exists():
        return destination
    repo_id, revision = parse_hub_id(hub_id)
    hub = _import_extra("huggingface_hub", f"model {hub_id} (a Hugging Face Hub id)")
    errors = importlib.import_module("huggingface_hub.errors")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{destination.name}.partial-", dir=destination.parent) as work:
        snapshot = Path(work) / "snapshot"
        try:
            hub.snapshot_download(
                repo_id,
                revision=revision,
                local_dir=snapshot,
                # Where huggingface_hub records the commit a revision resolved to, even for a
                # local_dir download: kept in the temporary folder, not the user's home.
                cache_dir=Path(work) / "cache",
                allow_patterns=HUB_FILES,
                # huggingface_hub reads HF_ENDPOINT once, when it is imported.
                endpoint=os.environ.get("HF_ENDPOINT"),
            )
        except errors.RevisionNotFoundError:
            raise DiagnosticsError(
                f"model {hub_id}: the Hub has no revision '{revision}' of {repo_id}; check what follows '@'"
            ) from None
        except errors.RepositoryNotFoundError:
            raise DiagnosticsError(
                f"model {hub_id}: no such repository on the Hub, or it is private or gated; check the "
                "id, or log in with `hf auth login`"
            ) from None
        except OSError as error:
            raise DiagnosticsError(
                f"model {hub_id}: could not download it ({first_line(error)}); without network, download "
                f"the folder by hand ({_manual_download(repo_id, revision, destination)}) and point "
                "checkpoint: at it"
            ) from None
        # huggingface_hub's bookkeeping of the download: the folder keeps the model's files only.
        shutil.rmtree(snapshot / ".cache", ignore_errors=True)
        os.replace(snapshot, destination)
    return destination


def _manual_download(repo_id: str, revision: str | None, destination: Path) -> str:
    url = f"{os.environ.get('HF_ENDPOINT', HUB_ENDPOINT).rstrip('/')}/{repo_id}"
    if revision is None:
        return f"`hf download {repo_id} --local-dir {destination}` or `git clone {url} {destination}`"
    return (
        f"`hf download {repo_id} --revision {revision} --local-dir {destination}` or "
        f"`git clone {url} {destination} && git -C {destination} checkout {revision}`"
    )


# --- the user's own network ---------------------------------------------------------------------


def load_entry_point(spec: Mapping, device: torch.device | str = "cpu") -> tuple[DiffusionProcess, dict]:
    """The user's own network, from a model entry of the config::

        {"entry_point": "package.module:function",   # returns an nn.Module called as model(x_t, t)
         "weights": "path.safetensors",               # or .pt / .pth / .bin, a state dict of tensors
         "kwargs": {...},                             # optional, passed to the function
         "sample_shape": [C, H, W],
         "schedule": {...},                           # optional, diffusers' scheduler keys
         "rescale_timesteps": False}                  # optional: t given as t · 1000 / T (improved-diffusion)

    Schedule keys left out take ProcessConfig's defaults, so diffusers need not be installed.
    """
    entry = _checked_entry(spec)
    entry_point = entry["entry_point"]
    network = _build_network(entry_point, entry.get("kwargs") or {})
    weights = Path(entry["weights"])
    state_dict, schedule, trainer = _entry_weights(entry, weights)
    if trainer is not None:
        lucidrains.check_network(network, f"weights {weights}")
    detail = state_dict_mismatch(network, state_dict)
    if detail:
        raise DiagnosticsError(
            f"weights {weights}: they do not fit the network that {entry_point} builds ({detail}); give "
            "the state_dict() of that network, built with the same kwargs"
        )
    network.load_state_dict(state_dict)
    if entry.get("rescale_timesteps"):
        timesteps = ProcessConfig.from_scheduler_config(
            schedule, f"model entry {entry_point}: schedule"
        ).timesteps
        network = RescaledTimesteps(network, timesteps)
    diffusion = _diffusion_process(
        network, schedule, tuple(entry["sample_shape"]), f"model entry {entry_point}: schedule"
    )
    _check_output_channels(diffusion, f"model entry {entry_point}")
    info = {
        "source": "entry_point",
        "path": str(weights),
        "entry_point": entry_point,
        "model": f"network {entry_point}",
    }
    if trainer is not None:
        info["trainer"] = trainer
        info["model"] += f" ({trainer['weights']} weights of a denoising-diffusion-pytorch Trainer file"
        info["model"] += f", step {trainer['step']})"
    info.update({key: schedule[key] for key in SAMPLING_KEYS if key in schedule})
    info["description"] = _describe(info["model"], f"weights {weights}", diffusion)
    return diffusion.to(device).eval(), info


class RescaledTimesteps(nn.Module):
    """A network trained on timesteps rescaled to [0, 1000) (improved-diffusion's
    ``rescale_timesteps``, its default): called with t, it is given t · 1000 / T as a float."""

    def __init__(self, network: nn.Module, timesteps: int):
        super().__init__()
        self.network, self.timesteps = network, timesteps

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.network(x_t, t.float() * (1000.0 / self.timesteps))


def _check_output_channels(diffusion: DiffusionProcess, where: str) -> None:
    """One forward pass on zeros: the network gives C channels, or 2C for a learned variance."""
    channels = diffusion.sample_shape[0]
    expected = channels * (2 if diffusion.learned_variance else 1)
    try:
        with torch.inference_mode():
            output = diffusion.model(
                torch.zeros((1, *diffusion.sample_shape)), torch.zeros(1, dtype=torch.long)
            )
    # The user's network can fail in any way.
    except Exception as error:
        raise DiagnosticsError(
            f"{where}: calling the network as model(x_t, t) on zeros of sample_shape "
            f"{list(diffusion.sample_shape)} failed ({first_line(error)}); it must take a batch of images "
            "and of int64 timesteps"
        ) from None
    if output.shape[1] != expected:
        what = (
            f"2 × its image channels (variance_type {diffusion.variance_type})"
            if diffusion.learned_variance
            else "its image channels"
        )
        raise DiagnosticsError(
            f"{where}: the network gives {output.shape[1]} channels out, not {expected}, {what} of "
            f"sample_shape {list(diffusion.sample_shape)}; check sample_shape and schedule.variance_type"
        )


def _entry_weights(entry: Mapping, weights: Path) -> tuple[dict, dict, dict | None]:
    """The network's state dict, the schedule and, for a denoising-diffusion-pytorch Trainer file,
    what was read from it (which weights, its step): from a Trainer file, its EMA network (or the
    online one, ``trainer_weights``) and the schedule of its own buffers; from any other file, the
    state dict it is and the entry's ``schedule``."""
    schedule = dict(entry.get("schedule") or {})
    payload = read_state_dict(weights, allow=lucidrains.is_trainer_file)
    if not lucidrains.is_trainer_file(payload):
        if "trainer_weights" in entry:
            raise DiagnosticsError(
                f"weights {weights}: trainer_weights is for a denoising-diffusion-pytorch Trainer file, and "
                "this is a plain state dict; leave trainer_weights out"
            )
        return payload, schedule, None
    where = f"weights {weights}"
    choice = entry.get("trainer_weights", "ema")
    checkpoint = lucidrains.read_trainer_checkpoint(payload, choice, where)
    other = sorted(set(schedule) - {"prediction_type"})
    if other:
        raise DiagnosticsError(
            f"{where}: a Trainer file holds its own schedule; schedule may only give prediction_type, not "
            f"{', '.join(other)}"
        )
    process = lucidrains.trainer_process(checkpoint, schedule.get("prediction_type"), where)
    return checkpoint.network, process, {"weights": choice, "step": checkpoint.step}


def _checked_entry(spec: Mapping) -> Mapping:
    where = f"model entry {spec.get('entry_point', '')}".rstrip()
    unknown = sorted(set(spec) - set(ENTRY_KEYS))
    if unknown:
        raise DiagnosticsError(f"{where}: unknown key {', '.join(unknown)}; it takes {', '.join(ENTRY_KEYS)}")
    missing = [key for key in REQUIRED_ENTRY_KEYS if key not in spec]
    if missing:
        raise DiagnosticsError(
            f"{where}: {', '.join(missing)} missing; it needs {', '.join(REQUIRED_ENTRY_KEYS)}"
        )
    shape = spec["sample_shape"]
    if not (isinstance(shape, (list, tuple)) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
        raise DiagnosticsError(
            f"{where}: sample_shape {shape!r} should be a list of positive sizes, e.g. [1, 28, 28]"
        )
    for key in ("kwargs", "schedule"):
        if not isinstance(spec.get(key) or {}, Mapping):
            raise DiagnosticsError(f"{where}: {key} should be a mapping, got {spec[key]!r}")
    unknown = sorted(set(spec.get("schedule") or {}) - set(SCHEDULER_KEYS) - set(SAMPLING_KEYS))
    if unknown:
        raise DiagnosticsError(
            f"{where}: schedule key {', '.join(unknown)} is not read; it takes diffusers' scheduler keys "
            f"{', '.join([*SCHEDULER_KEYS, *SAMPLING_KEYS])}"
        )
    return spec


def _build_network(entry_point: str, kwargs: Mapping) -> nn.Module:
    module_name, _, function_name = entry_point.partition(":")
    if not module_name or not function_name:
        raise DiagnosticsError(f"entry_point {entry_point!r}: write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    # Importing runs the user's module, which can fail in any way.
    except Exception as error:
        raise DiagnosticsError(
            f"entry_point {entry_point}: cannot import {module_name} ({first_line(error)}); install the "
            "package that provides it or put its folder on PYTHONPATH"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise DiagnosticsError(f"entry_point {entry_point}: {module_name} has no function {function_name}")
    try:
        network = function(**kwargs)
    except Exception as error:
        raise DiagnosticsError(
            f"entry_point {entry_point}: calling it with kwargs {dict(kwargs)} failed ({first_line(error)})"
        ) from None
    if not isinstance(network, nn.Module):
        raise DiagnosticsError(
            f"entry_point {entry_point}: returned a {type(network).__name__}, not a torch.nn.Module; it "
            "must return the network, called as model(x_t, t)"
        )
    return network


def read_state_dict(path: Path, allow=lambda content: False) -> dict:
    """A state dict from a safetensors file, or from a PyTorch file with weights_only; a file
    whose content ``allow`` accepts (a Trainer file of another codebase) is given as it is."""
    if not path.is_file():
        raise DiagnosticsError(f"weights {path}: no such file; save the network's state_dict() there")
    state_dict = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_weights(path)
    if allow(state_dict):
        return state_dict
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise DiagnosticsError(
            f"weights {path}: not a state dict (a dict of tensors); save the network's state_dict() there"
        )
    return state_dict


def _read_safetensors(path: Path) -> dict:
    safetensors_torch = _import_extra("safetensors.torch", f"weights {path}")
    try:
        return safetensors_torch.load_file(str(path))
    # safetensors' parse errors share no base class beyond Exception.
    except Exception as error:
        raise DiagnosticsError(
            f"weights {path}: not a readable safetensors file, truncated or corrupt ({first_line(error)})"
        ) from None


def _read_torch_weights(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" in str(error):
            # weights_only refused an object that is not a tensor or a plain container: unpickling it
            # would have built foreign objects, possibly running code on the way.
            raise DiagnosticsError(
                f"weights {path}: refused, it holds objects other than tensors and unpickling them could "
                "run code; save the network's state_dict() (or use safetensors)"
            ) from None
        raise DiagnosticsError(f"weights {path}: not a readable PyTorch file, truncated or corrupt") from None
    # Arbitrary bytes fail to load in arbitrary ways.
    except Exception as error:
        raise DiagnosticsError(
            f"weights {path}: not a readable PyTorch file, truncated or corrupt ({first_line(error)})"
        ) from None
