"""Diagnostics for a diffusion model of MNIST digits, ours or one made elsewhere: the loss across
diffusion and the likelihood bound, noise-space interpolation, and sample quality as numbers.

The names below are imported when first used (PEP 562), so that the workflow's planner, which
reads only the torch-free modules (sources, process_config, config), starts without torch.
"""

from __future__ import annotations

import importlib

# Each public name and the module that defines it.
_EXPORTS = {
    "DiagnosticsError": "errors",
    "DiffusionProcess": "diffusion",
    "ProcessConfig": "process_config",
    "Sampler": "decoding",
    "SamplingOptions": "diffusion",
    "TimestepLossMonitor": "monitor",
    "UNet": "unet",
    "ddim_sample_from_xt": "original",
    "interpolate": "interpolation",
    "interpolate_noise_and_generate": "original",
    "interpolate_noise_and_generate_ddim": "original",
    "interpolation_grid": "decoding",
    "decode": "decoding",
    "load_checkpoint": "checkpoint",
    "load_model": "models",
    "per_timestep_loss": "analysis",
    "sample_from_xt": "original",
    "save_checkpoint": "checkpoint",
    "save_grid": "grids",
    "timestep_loss_statistics": "analysis",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
