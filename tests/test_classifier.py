"""The digit classifier: deterministic training that learns, a faithful file round trip, and a
one-line DiagnosticsError naming the file for every kind of bad classifier file."""

from __future__ import annotations

import pickle
import random
from functools import partial

import pytest
import torch

from diffusion_diagnostics import DiagnosticsError, save_checkpoint
from diffusion_diagnostics.classifier import (
    FORMAT,
    VERSION,
    WARMUP_FRACTION,
    DigitClassifier,
    load_classifier,
    one_cycle,
    random_shift,
    save_classifier,
    train_classifier,
)

from doubles import CreatesMarker, one_error_line, tiny_unet


def bars(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An easy two-class problem: a horizontal bar is class 3, a vertical bar class 7, each at a
    random place, on a noisy background, in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.where(torch.rand(n, generator=generator) < 0.5, 3, 7)
    images = torch.full((n, 1, 28, 28), -1.0)
    places = torch.randint(6, 22, (n,), generator=generator)
    for i, (label, place) in enumerate(zip(labels.tolist(), places.tolist(), strict=True)):
        if label == 3:
            images[i, 0, place - 1 : place + 2, 6:22] = 1.0
        else:
            images[i, 0, 6:22, place - 1 : place + 2] = 1.0
    noise = 0.2 * torch.rand(images.shape, generator=generator)
    return (images + noise).clamp(-1, 1), labels


def train_bars(seed: int = 0):
    train_images, train_labels = bars(200, seed=1)
    heldout_images, heldout_labels = bars(100, seed=2)
    return train_classifier(
        train_images,
        train_labels,
        heldout_images,
        heldout_labels,
        steps=12,
        batch_size=32,
        lr=1e-3,
        seed=seed,
    )


@pytest.fixture(scope="module")
def trained():
    return train_bars()


# --- training ------------------------------------------------------------------------------------


def test_training_learns_the_easy_problem(trained):
    model, summary = trained
    assert summary["heldout_accuracy"] >= 0.9, summary
    assert summary["train_size"] == 200 and summary["heldout_size"] == 100
    assert summary["steps"] == 12 and summary["epochs"] == 2  # 6 whole batches of 32 per pass
    per_class = summary["per_class_accuracy"]
    assert len(per_class) == 10
    assert per_class[3] is not None and per_class[7] is not None
    assert all(per_class[digit] is None for digit in range(10) if digit not in (3, 7))
    assert [(entry["step"], entry["epoch"]) for entry in summary["history"]] == [(6, 1), (12, 2)]
    assert not model.training


def test_training_is_deterministic_and_leaves_the_global_rng_alone(trained):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    again, summary = train_bars(seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    for name, tensor in trained[0].state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    assert summary == trained[1]
    other, _ = train_bars(seed=1)
    assert not torch.equal(other.head[1].weight, again.head[1].weight)


def test_the_budget_is_in_steps_whatever_the_passes():
    images, labels = bars(40, seed=0)
    _, summary = train_classifier(images, labels, images, labels, steps=7, batch_size=8)
    # 5 whole batches per pass: an entry after the first pass, and one at the last step.
    assert [(entry["step"], entry["epoch"]) for entry in summary["history"]] == [(5, 1), (7, 1.4)]
    assert summary["steps"] == 7 and summary["epochs"] == 1.4


def test_bad_training_inputs_are_one_line_errors():
    images, labels = bars(40, seed=0)
    for arguments, words in (
        (((images + 1) * 127.5).to(torch.uint8), "expected float in [-1, 1]"),
        (images * 255, "expected [-1, 1]"),
        (images[:, 0], "expected (N, 1, 28, 28)"),
    ):
        one_error_line(
            partial(train_classifier, arguments, labels, images, labels, steps=1, batch_size=8), words
        )
    with pytest.raises(DiagnosticsError, match="labels"):
        train_classifier(images, labels[:-1], images, labels, steps=1, batch_size=8)
    with pytest.raises(DiagnosticsError, match="batch_size"):
        train_classifier(images, labels, images, labels, steps=1, batch_size=41)
    with pytest.raises(DiagnosticsError, match="steps must be at least 1"):
        train_classifier(images, labels, images, labels, steps=0, batch_size=8)


def test_random_shift_moves_each_image_by_at_most_two_pixels():
    images = torch.full((64, 1, 28, 28), -1.0)
    images[:, 0, 14, 14] = 1.0
    shifted = random_shift(images, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    assert torch.equal(shifted.sum((1, 2, 3)), images.sum((1, 2, 3)))  # nothing lost, background -1
    rows, columns = torch.nonzero(shifted[:, 0] == 1.0)[:, 1:].T
    assert (rows - 14).abs().max() <= 2 and (columns - 14).abs().max() <= 2
    assert len(set(zip(rows.tolist(), columns.tolist(), strict=True))) > 10  # shifts do vary
    assert torch.equal(random_shift(images, torch.Generator(), max_shift=0), images)


def test_one_cycle_climbs_to_the_peak_then_decays_to_zero():
    total = 100
    factors = [one_cycle(step, total) for step in range(total)]
    warmup = round(WARMUP_FRACTION * total)
    assert factors[0] == 1 / warmup and factors[warmup - 1] == 1.0 == factors[warmup]
    assert all(a < b for a, b in zip(factors[:warmup], factors[1:warmup], strict=False))
    assert all(a > b for a, b in zip(factors[warmup:], factors[warmup + 1 :], strict=False))
    assert 0 < factors[-1] < 0.001
    assert one_cycle(0, 1) == 1.0  # a one-step run trains at the peak rate


# --- the file ------------------------------------------------------------------------------------


def test_round_trip_gives_identical_logits(trained, tmp_path):
    model, summary = trained
    path = tmp_path / "nested" / "classifier.pt"
    save_classifier(path, model, summary)
    loaded, loaded_summary = load_classifier(path)
    assert isinstance(loaded, DigitClassifier) and not loaded.training
    assert loaded_summary == summary
    images, _ = bars(16, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
        assert torch.equal(loaded.features(images), model.features(images))
    assert loaded.features(images).shape == (16, 128)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["version"] == VERSION
    assert set(payload) == {"format", "version", "state_dict", "summary"}


def assert_refused(path, *words: str) -> str:
    """load_classifier(path) stops with one error line naming the file and the rule to rerun."""
    return one_error_line(lambda: load_classifier(path), path, "rerun the train_classifier rule", *words)


def test_missing_empty_and_corrupt_files(tmp_path):
    assert_refused(tmp_path / "absent.pt", "no such file")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert_refused(empty, "empty", FORMAT)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(random.Random(0).randbytes(4096))
    assert_refused(garbage, "corrupt", FORMAT)


def test_a_diffusion_checkpoint_is_not_a_classifier(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_unet(), {"timesteps": 20, "beta_start": 1e-3, "beta_end": 0.2})
    assert_refused(path, "not a diffusion-diagnostics classifier", "model_config", FORMAT)


def test_weights_of_another_network_and_another_version(tmp_path):
    weights = DigitClassifier().state_dict()
    del weights["head.1.bias"]
    path = tmp_path / "pruned.pt"
    torch.save({"format": FORMAT, "version": VERSION, "state_dict": weights, "summary": {}}, path)
    assert_refused(path, "do not fit", "head.1.bias")
    for other in (VERSION - 1, VERSION + 1):  # the two-block network of version 1, and a newer one
        path = tmp_path / f"version-{other}.pt"
        torch.save({"format": FORMAT, "version": other, "state_dict": {}, "summary": {}}, path)
        assert_refused(path, f"version {other} is not supported")


def test_code_in_a_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "malicious.pt"
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": {},
        "summary": {"x": CreatesMarker(marker)},
    }
    torch.save(payload, path)
    assert_refused(path, "refused")
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps(CreatesMarker(marker), protocol=2))
    assert_refused(bare)
    assert not marker.exists()
