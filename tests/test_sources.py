"""What a `checkpoint:` value names, read before anything runs (sources.py): a path that is not
there and a malformed hub id are refused in one line naming the config key; nothing is created."""

from __future__ import annotations

import pytest

from diffusion_diagnostics.sources import check_source, check_trajectory

from doubles import one_error_line

REMEDY = "set it to train to train a model with the workflow"


def refused(source, where="checkpoint") -> str:
    message = one_error_line(lambda: check_source(source, where))
    assert message.startswith(f"{where}: "), message
    return message


@pytest.mark.parametrize("name", ["missing.pt", "missing-folder", "runs/exp7/missing.safetensors"])
def test_a_path_that_is_not_there_is_refused_naming_it_and_the_remedy(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    message = refused(name, "models.mine.checkpoint")
    assert f"{name} does not exist" in message and REMEDY in message
    assert list(tmp_path.iterdir()) == []


def test_an_entry_points_weights_must_be_there(tmp_path):
    entry = {
        "entry_point": "own_network:build",
        "weights": str(tmp_path / "own.pt"),
        "sample_shape": [1, 28, 28],
    }
    assert "own.pt does not exist" in refused(entry)
    (tmp_path / "own.pt").write_bytes(b"")
    check_source(entry)  # what the file holds is the loader's to judge, when the rule runs


@pytest.mark.parametrize("hub_id", ["hf:not-an-id", "hf:owner/na me", "hf:owner--x/name", "hf:owner/a..b"])
def test_a_malformed_hub_id_is_refused(hub_id):
    assert "not a Hugging Face Hub id" in refused(hub_id)


def test_what_exists_trains_or_downloads_passes(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    for source in (
        "train",
        "hf:owner/name",
        "hf:owner/name@v1.0",
        str(tmp_path / "model.pt"),
        str(tmp_path / "folder"),
    ):
        check_source(source)


def test_a_trajectory_must_name_a_folder_or_a_glob_that_matches(tmp_path):
    one_error_line(lambda: check_trajectory(str(tmp_path / "run-*.pt")), "matches no file or folder")
    one_error_line(lambda: check_trajectory(str(tmp_path / "missing")), "is not a folder")
    (tmp_path / "model-1.pt").write_bytes(b"")
    assert check_trajectory(str(tmp_path / "model-*.pt")) == [str(tmp_path / "model-1.pt")]
    assert check_trajectory(str(tmp_path)) == [str(tmp_path)]
