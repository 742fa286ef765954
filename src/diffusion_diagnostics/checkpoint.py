"""The one checkpoint format: saved and loaded here and nowhere else.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads with
``torch.load(weights_only=True)``: nothing in the file can run code. The workflow's planner reads a
checkpoint's process before any job runs, and without torch (:func:`read_process_config`); torch
and the network are imported by the functions that need them.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DiagnosticsError
from .process_config import ProcessConfig

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from .diffusion import DiffusionProcess
    from .unet import UNet

FORMAT = "diffusion-diagnostics-checkpoint"
VERSION = 1
EXPECTED = (
    f"expected a '{FORMAT}' file written by this workflow's train rule "
    "(a dict with format, model_config, diffusion_config and state_dict)"
)


WEIGHTS = ("ema", "online")


def save_checkpoint(
    path: str | os.PathLike,
    model: UNet,
    diffusion_config: dict,
    training: dict | None = None,
    state_dict: dict | None = None,
    online_state_dict: dict | None = None,
) -> None:
    """Write the network's constructor arguments, the process and the weights.

    ``diffusion_config`` is the process as :meth:`ProcessConfig.to_dict` gives it (or any subset of
    its keys); ``state_dict`` defaults to the model's own; training passes its EMA weights here,
    and a training snapshot the online weights beside them (``online_state_dict``).
    """
    from .files import save_torch

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": dict(model.config),
        "diffusion_config": dict(diffusion_config),
        "state_dict": _portable(state_dict or model.state_dict()),
        "training": dict(training or {}),
    }
    if online_state_dict is not None:
        payload["online_state_dict"] = _portable(online_state_dict)
    save_torch(payload, path)


def _portable(state_dict: dict) -> dict:
    # On the CPU, in the default layout, whatever layout the network computes in (unet.py).
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def state_dict_mismatch(model: torch.nn.Module, state_dict: dict) -> str:
    """What keeps ``state_dict`` from loading into ``model`` (names missing, unexpected or of
    another shape, with both shapes), or "" when it fits."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{name} ({'×'.join(map(str, state_dict[name].shape))} in the weights, "
        f"{'×'.join(map(str, tensor.shape))} in the network)"
        for name, tensor in expected.items()
        if name in state_dict and getattr(state_dict[name], "shape", None) != tensor.shape
    ]
    return "; ".join(
        f"{what}: {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
        for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
        if names
    )


def load_checkpoint(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    weights: str = "ema",
    finite_only: bool = True,
) -> tuple[DiffusionProcess, dict]:
    """Rebuild the diffusion process from a checkpoint file: its EMA network, or with
    ``weights="online"`` the online one a training snapshot keeps beside it. Weights that hold
    NaN or Inf are one error line, or with ``finite_only=False`` a warning (a trajectory reports
    such a checkpoint as collapsed).

    Returns the process, in eval mode on ``device``, and the checkpoint's training metadata.
    """
    import torch

    from .diffusion import DiffusionProcess
    from .files import read_tagged_file
    from .unet import UNet

    path = Path(path)
    payload = read_tagged_file(path, FORMAT, VERSION, EXPECTED)
    try:
        model = UNet(**payload["model_config"])
    except TypeError as error:
        raise DiagnosticsError(
            f"checkpoint {path}: its model_config does not fit this UNet ({error})"
        ) from None
    if weights not in WEIGHTS:
        raise DiagnosticsError(f"checkpoint weights '{weights}' are not one of {', '.join(WEIGHTS)}")
    if weights == "online" and "online_state_dict" not in payload:
        raise DiagnosticsError(
            f"checkpoint {path}: holds the EMA weights only, not the online ones; follow its ema weights"
        )
    state_dict = payload["state_dict" if weights == "ema" else "online_state_dict"]
    detail = state_dict_mismatch(model, state_dict)
    if detail:
        raise DiagnosticsError(
            f"checkpoint {path}: its weights were made for another architecture than its "
            f"model_config describes ({detail})"
        )
    broken = [name for name, tensor in state_dict.items() if not torch.isfinite(tensor).all()]
    if broken and finite_only:
        raise DiagnosticsError(
            f"checkpoint {path}: weights hold NaN or Inf ({', '.join(broken[:3])}); "
            "the model diverged while training, retrain it"
        )
    if broken:
        log.warning("checkpoint %s: weights hold NaN or Inf (%s)", path, ", ".join(broken[:3]))
    model.load_state_dict(state_dict)
    config = ProcessConfig.from_dict(payload["diffusion_config"], f"checkpoint {path}: diffusion_config")
    return DiffusionProcess(model, config=config).to(device).eval(), dict(payload.get("training", {}))


def read_process_config(path: str | os.PathLike) -> ProcessConfig | None:
    """The process of a checkpoint file, read without torch and without running anything the file
    names; None for a file that is not a readable checkpoint (the rule that loads it then says
    what is wrong)."""
    header = read_header(path)
    try:
        return ProcessConfig.from_dict(header["diffusion_config"]) if header else None
    except DiagnosticsError:
        return None


def read_header(path: str | os.PathLike) -> dict | None:
    """A checkpoint's plain values (format, diffusion_config, training, ...) with every tensor read
    as None, without torch and without running anything the file names; None for a file that is
    not a readable checkpoint."""
    payload = read_plain(path)
    return payload if isinstance(payload, dict) and payload.get("format") == FORMAT else None


def read_plain(path: str | os.PathLike):
    """The plain values of any torch.save file (its dicts, lists, numbers and strings; every tensor
    None), without torch and without running anything the file names; None for a file that is
    not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(member for member in archive.namelist() if member.endswith("/data.pkl"))
            return _PlainDataUnpickler(archive.open(name)).load()
    except Exception:  # noqa: BLE001 - not a torch.save file, or damaged: bytes fail in arbitrary ways
        return None


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads the plain values of a torch.save file: every tensor and torch object becomes None,
    and nothing the file names is imported or run."""

    def find_class(self, module, name):
        # A state dict is an OrderedDict (with its _metadata set as an attribute): read as a dict.
        return _PlainDict if (module, name) == ("collections", "OrderedDict") else _nothing

    def persistent_load(self, pid):
        return None


class _PlainDict(dict):
    """A dict that takes attributes, as the OrderedDict of a state dict is given them."""


def _nothing(*args, **kwargs):
    return None
