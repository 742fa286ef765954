"""The machine side of a run: the device, the precision's dtype, glibc's freed memory, where a module
lives, and progress bars that suit a log file."""

from __future__ import annotations

import ctypes
import ctypes.util
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


# The workflow's `precision` choices: the dtype the network's forward passes run in while sampling.
AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a `precision` name (None: plain float32)."""
    if precision not in AUTOCAST_DTYPES:
        raise DiagnosticsError(f"precision '{precision}' is not one of {', '.join(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[precision]


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of giving it back to the OS at once.

    PyTorch frees each activation right after use. By default glibc unmaps large freed blocks
    and trims the heap, so the next forward pass faults in fresh zeroed pages, tens of thousands
    per forward of the default network (the cost is measured in BENCHMARKS.md). Raising glibc's
    mmap and trim thresholds makes the blocks reusable; peak memory is unchanged, it is only
    returned at exit instead. Process-wide, so it is for entry points (the workflow's scripts, the
    benchmark), not for library calls. Returns whether it took
    effect; a no-op where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    # Older glibc caps the mmap threshold at 32 MiB; larger blocks are then mapped as before.
    mapped = mallopt(m_mmap_threshold, 1 << 30) or mallopt(m_mmap_threshold, 32 << 20)
    return bool(mapped and mallopt(m_trim_threshold, 1 << 30))


def model_device(module: torch.nn.Module) -> torch.device:
    """The device a module's parameters live on (CPU for a module without parameters)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def progress_bar(iterable=None, **kwargs):
    """tqdm on stderr; in a log file (not a terminal) one line every 15 s instead of many a second."""
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 15.0)
    return tqdm(iterable, **kwargs)
