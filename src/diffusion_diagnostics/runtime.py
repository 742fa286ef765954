"""Choosing the device and the number of CPU threads."""

from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm

from .errors import DiagnosticsError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` is CUDA when a GPU is visible (under SLURM, the one the job was given), else CPU.

    Asking for CUDA where there is none is an error rather than a silent fall-back to the CPU,
    which would turn a minutes-long GPU job into hours without saying so.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise DiagnosticsError(f"device '{spec}' is not a device name; use auto, cpu or cuda") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiagnosticsError(
            f"device '{spec}' was asked for, but no CUDA GPU is visible to PyTorch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
            "set device: auto or device: cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DiagnosticsError(
            f"device '{spec}' was asked for, but only {torch.cuda.device_count()} GPU(s) are visible"
        )
    return device


def model_device(module: torch.nn.Module) -> torch.device:
    """The device a module's parameters live on (CPU for a module without parameters)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def progress_bar(iterable=None, **kwargs):
    """tqdm on stderr; in a log file (not a terminal) one line every 15 s instead of many a second."""
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 15.0)
    return tqdm(iterable, **kwargs)
