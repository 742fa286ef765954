"""Bringing 28 × 28 digits to a model's image size, and its samples back for the judge and grids.

MNIST models are often 32 × 32 (a UNet halves the size at each level). ``pad`` puts background
(-1) around the digit, as many 32 × 32 MNIST pipelines do, and crops it off again; ``resize``
scales bilinearly, with antialiasing when shrinking, both ways. Only one-channel models take
digits: a colour model cannot be fed grey digits without inventing its colours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import DiagnosticsError

DIGIT_SHAPE = (1, 28, 28)
IMAGE_FITS = ("pad", "resize")
BACKGROUND = -1.0


def check_fit(sample_shape: tuple[int, ...], fit: str) -> str:
    """How digits reach a model of ``sample_shape``, in words for logs and model.json, or one
    error line when they cannot."""
    if fit not in IMAGE_FITS:
        raise DiagnosticsError(f"image_fit '{fit}' is unknown; use one of {', '.join(IMAGE_FITS)}")
    channels, height, width = sample_shape
    if channels != 1:
        raise DiagnosticsError(
            f"the model takes {channels}-channel images of {height} × {width}; MNIST digits have one "
            "channel, so this model cannot be diagnosed on them"
        )
    if (height, width) == DIGIT_SHAPE[1:]:
        return "as they are (28 × 28)"
    if fit == "pad" and (height < 28 or width < 28):
        raise DiagnosticsError(
            f"the model's images are {height} × {width}, smaller than the 28 × 28 digits, which "
            "cannot be padded to it; set image_fit: resize"
        )
    verb = "padded with background" if fit == "pad" else "resized"
    return f"{verb} from 28 × 28 to {height} × {width}, and samples back the same way"


def _padding(height: int, width: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom): the digit in the middle, the odd pixel on the right / bottom."""
    left, top = (width - 28) // 2, (height - 28) // 2
    return left, width - 28 - left, top, height - 28 - top


def to_model_size(images: torch.Tensor, sample_shape: tuple[int, ...], fit: str) -> torch.Tensor:
    """Digits (N, 1, 28, 28) in [-1, 1] as the model's images (N, *sample_shape)."""
    check_fit(sample_shape, fit)
    height, width = sample_shape[1:]
    if (height, width) == DIGIT_SHAPE[1:]:
        return images
    if fit == "pad":
        return F.pad(images, _padding(height, width), value=BACKGROUND)
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def to_digit_size(images: torch.Tensor, fit: str) -> torch.Tensor:
    """The model's images (..., 1, H, W) back as 28 × 28 digits, the inverse of to_model_size."""
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
