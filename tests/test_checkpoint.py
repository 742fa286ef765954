"""The checkpoint format: a faithful round trip, and a clear DiagnosticsError naming the file for
every kind of bad input, without ever running code from the file."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from diffusion_diagnostics import DiffusionProcess, UNet, load_checkpoint, save_checkpoint
from diffusion_diagnostics.checkpoint import FORMAT, VERSION

from doubles import CreatesMarker, one_error_line, tiny_unet

DIFFUSION_CONFIG = {"timesteps": 20, "beta_start": 1e-3, "beta_end": 0.2, "clip_sample": False}
TRAINING = {"best_step": 6, "best_val_loss": 0.25, "run_id": "0123abcd", "config": {"lr": 1e-3, "steps": 6}}


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_unet(), DIFFUSION_CONFIG, TRAINING)
    return path


def assert_refused(path, *words: str) -> str:
    """load_checkpoint(path) stops with one error line naming the file and holding every word."""
    return one_error_line(lambda: load_checkpoint(path), path, *words)


# --- round trip ----------------------------------------------------------------------------------


def test_round_trip_restores_weights_config_schedule_and_metadata(tmp_path):
    model = tiny_unet(dropout=0.1)
    path = tmp_path / "nested" / "model.pt"
    save_checkpoint(path, model, DIFFUSION_CONFIG, TRAINING)

    diffusion, training = load_checkpoint(path)

    loaded = diffusion.model
    assert isinstance(diffusion, DiffusionProcess) and isinstance(loaded, UNet)
    assert loaded.config == model.config
    assert loaded.config["channel_mults"] == [1, 2] and loaded.config["dropout"] == 0.1
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    fresh = DiffusionProcess(model, **DIFFUSION_CONFIG)
    assert diffusion.schedule_config() == fresh.schedule_config()
    assert diffusion.schedule_config().items() >= DIFFUSION_CONFIG.items()
    assert torch.equal(diffusion.alpha_bars, fresh.alpha_bars)
    assert torch.equal(diffusion.posterior_variance, fresh.posterior_variance)
    assert diffusion.sample_shape == (1, 28, 28)
    assert training == TRAINING
    # Ready for inference: eval mode (dropout off), so two calls agree and match the original.
    assert not diffusion.training and not loaded.training
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 19])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))
    assert diffusion.device == torch.device("cpu")


def test_an_explicit_state_dict_is_what_gets_saved(tmp_path):
    """Training saves its EMA weights through ``state_dict``, with the live model's config."""
    live, ema = tiny_unet(seed=0), tiny_unet(seed=1)
    path = tmp_path / "ema.pt"
    save_checkpoint(path, live, DIFFUSION_CONFIG, state_dict=ema.state_dict())
    diffusion, training = load_checkpoint(path, device="cpu")
    for name, tensor in ema.state_dict().items():
        assert torch.equal(diffusion.model.state_dict()[name], tensor), name
    assert not torch.equal(diffusion.model.conv_out.weight, live.conv_out.weight)
    assert training == {}


def test_weights_are_saved_in_the_default_layout(tmp_path):
    """The network computes in channels-last; the file does not depend on that."""
    model = tiny_unet()
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    save_checkpoint(tmp_path / "model.pt", model, DIFFUSION_CONFIG)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(tensor.is_contiguous() for tensor in payload["state_dict"].values())
    loaded, _ = load_checkpoint(tmp_path / "model.pt")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_the_file_holds_only_plain_data(checkpoint):
    payload = torch.load(checkpoint, weights_only=True)
    assert payload["format"] == FORMAT and payload["version"] == VERSION
    assert set(payload) == {"format", "version", "model_config", "diffusion_config", "state_dict", "training"}
    assert all(tensor.device.type == "cpu" for tensor in payload["state_dict"].values())


# --- bad files -----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "no_such_model.pt", "no such file")
    assert_refused(tmp_path, "no such file")  # a directory is not a checkpoint


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert_refused(path, "empty")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    assert_refused(path, "corrupt")


def test_truncated_checkpoint(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, "corrupt")


def test_foreign_state_dict(tmp_path):
    """A plain state dict, as diffusers or a hand-written training script would save it."""
    path = tmp_path / "diffusers_unet.pt"
    torch.save(
        {
            "conv_in.weight": torch.zeros(32, 1, 3, 3),
            "time_embedding.linear_1.weight": torch.zeros(128, 32),
            "down_blocks.0.resnets.0.conv1.weight": torch.zeros(32, 32, 3, 3),
        },
        path,
    )
    message = assert_refused(path, "not a diffusion-diagnostics checkpoint")
    assert "conv_in.weight" in message  # says what it found
    other = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], other)
    assert_refused(other, "not a diffusion-diagnostics checkpoint")


def test_unsupported_version(tmp_path, checkpoint):
    payload = torch.load(checkpoint, weights_only=True)
    payload["version"] = VERSION + 1
    path = tmp_path / "future.pt"
    torch.save(payload, path)
    assert_refused(path, f"version {VERSION + 1}")


def test_model_config_that_does_not_fit(tmp_path, checkpoint):
    payload = torch.load(checkpoint, weights_only=True)
    payload["model_config"]["attention"] = True
    path = tmp_path / "odd_config.pt"
    torch.save(payload, path)
    assert_refused(path, "model_config")


def test_weights_for_another_architecture(tmp_path):
    path = tmp_path / "mismatch.pt"
    wider = tiny_unet(base_channels=16).state_dict()
    save_checkpoint(path, tiny_unet(base_channels=8), DIFFUSION_CONFIG, state_dict=wider)
    assert_refused(path, "another architecture", "wrong shape")

    fewer_levels = tmp_path / "levels.pt"
    save_checkpoint(
        fewer_levels,
        tiny_unet(channel_mults=(1, 2)),
        DIFFUSION_CONFIG,
        state_dict=tiny_unet(channel_mults=(1, 2, 2)).state_dict(),
    )
    assert_refused(fewer_levels, "another architecture", "unexpected")


def test_nan_weights(tmp_path):
    state = tiny_unet().state_dict()
    state["conv_in.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "diverged.pt"
    save_checkpoint(path, tiny_unet(), DIFFUSION_CONFIG, state_dict=state)
    assert_refused(path, "NaN", "conv_in.weight")


def test_nan_weights_are_loaded_when_asked_with_a_warning(tmp_path, caplog):
    """As a trajectory loads a checkpoint whose training diverged, to report it collapsed."""
    state = tiny_unet().state_dict()
    state["conv_in.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "diverged.pt"
    save_checkpoint(path, tiny_unet(), DIFFUSION_CONFIG, state_dict=state)
    diffusion, _ = load_checkpoint(path, finite_only=False)
    assert diffusion.model.conv_in.weight.isnan().any()
    assert "diverged.pt: weights hold NaN or Inf (conv_in.weight)" in caplog.text


def malicious_checkpoint(path, marker):
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": {"base_channels": 8, "channel_mults": [1, 2]},
        "diffusion_config": DIFFUSION_CONFIG,
        "state_dict": {},
        "training": {"note": CreatesMarker(marker)},
    }
    torch.save(payload, path)


def test_code_in_a_pickle_is_refused_and_not_run(tmp_path):
    # Control: the payload really does run code when unpickled without protection.
    control_marker = tmp_path / "control_marker"
    malicious_checkpoint(tmp_path / "control.pt", control_marker)
    unpickled = torch.load(tmp_path / "control.pt", weights_only=False)
    unpickled["training"]["note"].close()  # the file object that open() returned
    assert control_marker.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "malicious.pt"
    malicious_checkpoint(path, marker)
    assert_refused(path, "refused")
    assert not marker.exists()

    # The same object as a bare (non-zip) pickle stream.
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps(CreatesMarker(marker), protocol=2))
    assert_refused(bare)
    assert not marker.exists()
