"""Digits brought to a model's image size and back (image_fit), and models described from the config."""

from __future__ import annotations

import pytest
import torch

from diffusion_diagnostics.checkpoint import save_checkpoint
from diffusion_diagnostics.digits import check_fit, to_digit_size, to_model_size
from diffusion_diagnostics.sources import describe_source, hub_folder_name

from doubles import one_error_line, tiny_unet


def digits(count: int = 3) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_padding_puts_background_around_the_digit_and_crops_it_off_again():
    images = digits()
    padded = to_model_size(images, (1, 32, 32), "pad")
    assert padded.shape == (3, 1, 32, 32)
    assert torch.equal(padded[..., 2:30, 2:30], images)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (padded[..., border] == -1).all()
    assert torch.equal(to_digit_size(padded, "pad"), images)
    # An odd margin puts the extra pixel on the right and at the bottom, both ways.
    odd = to_model_size(images, (1, 31, 33), "pad")
    assert torch.equal(odd[..., 1:29, 2:30], images) and torch.equal(to_digit_size(odd, "pad"), images)


def test_resizing_goes_there_and_back_smoothly():
    images = torch.nn.functional.avg_pool2d(digits(), 3, stride=1, padding=1)  # smooth, like digits
    resized = to_model_size(images, (1, 32, 32), "resize")
    assert resized.shape == (3, 1, 32, 32) and resized.min() >= -1 and resized.max() <= 1
    back = to_digit_size(resized, "resize")
    assert back.shape == images.shape and (back - images).abs().mean() < 0.05
    smaller = to_model_size(images, (1, 16, 16), "resize")
    assert smaller.shape == (3, 1, 16, 16) and to_digit_size(smaller, "resize").shape == images.shape


def test_grids_keep_their_leading_dimensions():
    grid = torch.rand(2, 5, 1, 32, 32)
    assert to_digit_size(grid, "pad").shape == (2, 5, 1, 28, 28)
    assert torch.equal(to_digit_size(grid, "pad"), grid[..., 2:30, 2:30])


def test_digits_of_the_models_own_size_are_left_alone():
    images = digits()
    assert to_model_size(images, (1, 28, 28), "resize") is images
    assert to_digit_size(images, "pad") is images
    assert check_fit((1, 28, 28), "pad") == "as they are (28 × 28)"
    assert check_fit((1, 32, 32), "pad").startswith("padded with background from 28 × 28 to 32 × 32")


def test_an_rgb_model_takes_the_grey_digit_in_every_channel():
    """As a model trained on MNIST through an RGB loader saw it (diffusers' train_unconditional.py);
    its samples come back as their channel mean, the digit itself when the channels agree."""
    images = digits()
    rgb = to_model_size(images, (3, 32, 32), "pad")
    assert rgb.shape == (len(images), 3, 32, 32)
    for channel in range(3):
        assert torch.equal(rgb[:, channel : channel + 1], to_model_size(images, (1, 32, 32), "pad"))
    torch.testing.assert_close(to_digit_size(rgb, "pad"), images)  # the mean of three equal values
    tinted = rgb.clone()
    tinted[:, 0] += 0.3
    torch.testing.assert_close(to_digit_size(tinted, "pad"), images + 0.1)
    assert (
        check_fit((3, 28, 28), "pad")
        == "as they are (28 × 28); in R, G and B alike, samples back as the mean of their channels"
    )
    assert "in R, G and B alike" in check_fit((3, 32, 32), "resize")


@pytest.mark.parametrize(
    ("shape", "fit", "message"),
    [
        ((2, 32, 32), "pad", "2-channel images of 32 × 32; MNIST digits are grey"),
        ((4, 28, 28), "resize", "4-channel images"),
        (
            (1, 16, 16),
            "pad",
            "smaller than the 28 × 28 digits, which cannot be padded to it; set image_fit: resize",
        ),
        ((1, 32, 32), "crop", "image_fit 'crop' is unknown"),
    ],
)
def test_a_model_digits_cannot_reach_is_one_line(shape, fit, message):
    one_error_line(lambda: to_model_size(digits(), shape, fit), message)


DEFAULT_PROCESS = {
    "timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
}


def test_every_kind_of_source_is_described_from_its_small_files(tmp_path):
    save_checkpoint(tmp_path / "mine.pt", tiny_unet(), {**DEFAULT_PROCESS, "prediction_type": "v_prediction"})
    assert describe_source(str(tmp_path / "mine.pt"), DEFAULT_PROCESS) == (
        f"checkpoint {tmp_path / 'mine.pt'}, linear β 0.0001 → 0.02, T = 1000, v_prediction, fixed_small"
    )
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    assert (
        describe_source(str(tmp_path / "other.pt"), DEFAULT_PROCESS) == f"checkpoint {tmp_path / 'other.pt'}"
    )
    assert describe_source("train", {**DEFAULT_PROCESS, "beta_schedule": "squaredcos_cap_v2"}) == (
        "trained by the workflow, squaredcos_cap_v2 β, T = 1000, epsilon, fixed_small"
    )
    folder = tmp_path / "flat"
    folder.mkdir()
    # An old config: the keys it lacks take diffusers' defaults; *_log variances are the same ones.
    (folder / "scheduler_config.json").write_text(
        '{"num_train_timesteps": 50, "variance_type": "fixed_large_log"}'
    )
    (folder / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    assert describe_source(str(folder), DEFAULT_PROCESS) == (
        f"diffusers folder {folder} (flat layout), linear β 0.0001 → 0.02, T = 50, epsilon, fixed_large"
    )
    entry = {"entry_point": "own_network:build", "weights": "w.pt", "schedule": {"prediction_type": "sample"}}
    assert describe_source(entry, DEFAULT_PROCESS) == (
        "own network own_network:build with weights w.pt, "
        "linear β 0.0001 → 0.02, T = 1000, sample, fixed_small"
    )
    (folder / "config.json").unlink()
    assert describe_source(str(folder), DEFAULT_PROCESS) == f"diffusers folder {folder} (unknown layout)"
    assert "hf:owner/name" in describe_source("hf:owner/name", DEFAULT_PROCESS)
    assert hub_folder_name("hf:owner/name@v2") == "owner--name--v2"
