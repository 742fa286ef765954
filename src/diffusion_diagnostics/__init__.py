"""Diagnostics for a diffusion model of MNIST digits, ours or one made elsewhere: the loss across
diffusion and the likelihood bound, noise-space interpolation, and sample quality as numbers."""

from .analysis import per_timestep_loss, timestep_loss_statistics
from .checkpoint import load_checkpoint, save_checkpoint
from .decoding import interpolation_grid
from .diffusion import DiffusionProcess, SamplingOptions
from .errors import DiagnosticsError
from .grids import save_grid
from .interpolation import interpolate
from .models import load_model
from .original import (
    ddim_sample_from_xt,
    interpolate_noise_and_generate,
    interpolate_noise_and_generate_ddim,
    sample_from_xt,
)
from .unet import UNet

__all__ = [
    "DiagnosticsError",
    "DiffusionProcess",
    "SamplingOptions",
    "UNet",
    "ddim_sample_from_xt",
    "interpolate",
    "interpolate_noise_and_generate",
    "interpolate_noise_and_generate_ddim",
    "interpolation_grid",
    "load_checkpoint",
    "load_model",
    "per_timestep_loss",
    "sample_from_xt",
    "save_checkpoint",
    "save_grid",
    "timestep_loss_statistics",
]
