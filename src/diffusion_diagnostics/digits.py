"""Bringing 28 × 28 digits to a model's image size, and its samples back for the judge and grids.

MNIST models are often 32 × 32 (a UNet halves the size at each level). ``pad`` puts background
(-1) around the digit, as many 32 × 32 MNIST pipelines do, and crops it off again; ``resize``
scales bilinearly, with antialiasing when shrinking, both ways.

A three-channel (RGB) model takes the grey digit in all three channels, which is what a model
trained on MNIST through an RGB loader saw (diffusers' ``train_unconditional.py`` converts every
image to RGB), and its samples come back as the mean of their channels. Other channel counts are
refused: grey digits cannot stand for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import DiagnosticsError

DIGIT_SHAPE = (1, 28, 28)
IMAGE_FITS = ("pad", "resize")
# Grey digits, or RGB with the grey in every channel.
CHANNELS = (1, 3)
BACKGROUND = -1.0


def check_fit(sample_shape: tuple[int, ...], fit: str) -> str:
    """How digits reach a model of ``sample_shape``, in words for logs and model.json, or one
    error line when they cannot."""
    if fit not in IMAGE_FITS:
        raise DiagnosticsError(f"image_fit '{fit}' is unknown; use one of {', '.join(IMAGE_FITS)}")
    channels, height, width = sample_shape
    if channels not in CHANNELS:
        raise DiagnosticsError(
            f"the model takes {channels}-channel images of {height} × {width}; MNIST digits are grey, "
            "which a model of 1 channel or 3 (RGB) takes, so this model cannot be diagnosed on them"
        )
    colour = "; in R, G and B alike, samples back as the mean of their channels" if channels == 3 else ""
    if (height, width) == DIGIT_SHAPE[1:]:
        return f"as they are (28 × 28){colour}"
    if fit == "pad" and (height < 28 or width < 28):
        raise DiagnosticsError(
            f"the model's images are {height} × {width}, smaller than the 28 × 28 digits, which "
            "cannot be padded to it; set image_fit: resize"
        )
    verb = "padded with background" if fit == "pad" else "resized"
    return f"{verb} from 28 × 28 to {height} × {width}, and samples back the same way{colour}"


def _padding(height: int, width: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom): the digit in the middle, the odd pixel on the right / bottom."""
    left, top = (width - 28) // 2, (height - 28) // 2
    return left, width - 28 - left, top, height - 28 - top


def to_model_size(images: torch.Tensor, sample_shape: tuple[int, ...], fit: str) -> torch.Tensor:
    """Digits (N, 1, 28, 28) in [-1, 1] as the model's images (N, *sample_shape)."""
    check_fit(sample_shape, fit)
    channels, height, width = sample_shape
    if (height, width) != DIGIT_SHAPE[1:] and fit == "pad":
        images = F.pad(images, _padding(height, width), value=BACKGROUND)
    elif (height, width) != DIGIT_SHAPE[1:]:
        images = F.interpolate(
            images, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
    return images.expand(-1, channels, -1, -1) if channels != 1 else images


def to_digit_size(images: torch.Tensor, fit: str) -> torch.Tensor:
    """The model's images (..., C, H, W) back as 28 × 28 grey digits, the inverse of
    to_model_size."""
    if images.shape[-3] != 1:
        images = images.mean(dim=-3, keepdim=True)
    height, width = images.shape[-2:]
    if (height, width) == DIGIT_SHAPE[1:]:
        return images
    leading = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    if fit == "pad":
        left, _, top, _ = _padding(height, width)
        digits = flat[..., top : top + 28, left : left + 28]
    else:
        digits = F.interpolate(flat, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    return digits.reshape(*leading, *digits.shape[-3:])
