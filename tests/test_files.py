"""files.py directly: atomic outputs (no half-written file under the final name, no temporary left
behind), byte-stable tensor files, the CSV and JSON round trips, file digests against hashlib, and
read_tagged_file's one error line for every kind of bad file."""

from __future__ import annotations

import hashlib
import json
import math
import random

import pytest
import torch

from diffusion_diagnostics.files import (
    atomic_output,
    file_digest,
    read_csv,
    read_json,
    read_tagged_file,
    save_torch,
    write_csv,
    write_json,
)

from doubles import one_error_line

# --- atomic_output -------------------------------------------------------------------------------


def test_atomic_output_shows_the_file_only_once_the_block_succeeds(tmp_path):
    final = tmp_path / "deeper" / "figure.png"  # the parent folder does not exist yet
    with atomic_output(final) as temporary:
        # Written beside the final file, hidden, and with its suffix: matplotlib and torchvision
        # pick the image format from it.
        assert temporary.parent == final.parent and temporary.name.startswith(".")
        assert temporary.suffix == ".png" and temporary != final
        temporary.write_bytes(b"complete")
        assert not final.exists()
    assert final.read_bytes() == b"complete"
    assert [p.name for p in final.parent.iterdir()] == ["figure.png"]


def test_atomic_output_leaves_nothing_when_the_block_fails(tmp_path):
    final = tmp_path / "table.csv"
    with pytest.raises(RuntimeError, match="killed half-way"):
        with atomic_output(final) as temporary:
            temporary.write_text("half a ta")
            raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_an_existing_file_when_the_block_fails(tmp_path):
    final = tmp_path / "table.csv"
    final.write_text("the previous run's table\n")
    with pytest.raises(RuntimeError):
        with atomic_output(final) as temporary:
            temporary.write_text("half a ta")
            raise RuntimeError("killed half-way")
    assert final.read_text() == "the previous run's table\n"
    assert list(tmp_path.iterdir()) == [final]


# --- save_torch ----------------------------------------------------------------------------------


def test_equal_payloads_give_byte_identical_torch_files_whatever_their_names(tmp_path):
    def payload():
        return {"format": "x", "weights": torch.arange(12.0).reshape(3, 4), "labels": torch.tensor([1, 2])}

    save_torch(payload(), tmp_path / "first.pt")
    save_torch(payload(), tmp_path / "second.pt")
    save_torch(payload(), tmp_path / "first_again.pt")
    first = (tmp_path / "first.pt").read_bytes()
    assert first == (tmp_path / "second.pt").read_bytes() == (tmp_path / "first_again.pt").read_bytes()
    loaded = torch.load(tmp_path / "first.pt", weights_only=True)
    assert torch.equal(loaded["weights"], payload()["weights"]) and loaded["format"] == "x"


def test_save_torch_of_an_unsavable_payload_leaves_no_file(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - pickle's own error type differs across versions
        save_torch({"weights": torch.zeros(2), "code": lambda: None}, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


# --- CSV and JSON ----------------------------------------------------------------------------------


def test_csv_round_trip_takes_the_first_rows_keys_and_gives_strings(tmp_path):
    rows = [
        {"bucket": 0, "mse": 0.5, "set": "samples", "frechet_distance": 1.25},
        {"bucket": 1, "mse": 0.125, "set": "real held-out", "frechet_distance": None},
    ]
    write_csv(rows, tmp_path / "table.csv")
    assert (tmp_path / "table.csv").read_text().splitlines()[0] == "bucket,mse,set,frechet_distance"
    # Everything comes back as the string written; None (no value) as the empty string.
    assert read_csv(tmp_path / "table.csv") == [
        {"bucket": "0", "mse": "0.5", "set": "samples", "frechet_distance": "1.25"},
        {"bucket": "1", "mse": "0.125", "set": "real held-out", "frechet_distance": ""},
    ]


def test_csv_columns_given_set_the_order(tmp_path):
    rows = [{"a": 1, "b": 2, "c": 3}, {"a": 4, "b": 5, "c": 6}]
    write_csv(rows, tmp_path / "table.csv", columns=["c", "a", "b"])
    assert (tmp_path / "table.csv").read_text().splitlines() == ["c,a,b", "3,1,2", "6,4,5"]
    assert [list(row) for row in read_csv(tmp_path / "table.csv")] == [["c", "a", "b"]] * 2


def test_json_round_trip_writes_text_as_it_is_with_a_final_newline(tmp_path):
    payload = {"schedule": "β from 1e-4 to 0.02", "x̂₀": [1, 2.5, None], "nested": {"ok": True}}
    write_json(payload, tmp_path / "model.json")
    data = (tmp_path / "model.json").read_bytes()
    assert "β".encode() in data and "x̂₀".encode() in data and b"\\u" not in data
    assert data.endswith(b"}\n") and not data.endswith(b"\n\n")
    assert data.startswith(b'{\n  "schedule"')  # indented, keys in the order given
    assert read_json(tmp_path / "model.json") == payload


def test_json_writes_a_nan_or_infinity_as_null_which_strict_readers_accept(tmp_path):
    write_json({"error": math.nan, "steps": [1.0, -math.inf, (math.inf, 2)]}, tmp_path / "f.json")
    text = (tmp_path / "f.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=pytest.fail) == {"error": None, "steps": [1.0, None, [None, 2]]}


# --- file_digest ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_file_digest_agrees_with_hashlib_across_read_blocks(tmp_path, algorithm):
    # Two whole 1 MiB read blocks and a partial third: a digest of only the first block would differ.
    data = random.Random(0).randbytes((2 << 20) + 12345)
    (tmp_path / "big.bin").write_bytes(data)
    assert file_digest(tmp_path / "big.bin", algorithm) == hashlib.new(algorithm, data).hexdigest()


def test_file_digest_defaults_to_sha256(tmp_path):
    (tmp_path / "small.bin").write_bytes(b"digits")
    assert file_digest(tmp_path / "small.bin") == hashlib.sha256(b"digits").hexdigest()


# --- read_tagged_file ----------------------------------------------------------------------------

EXPECTED = "expected a file written by the train rule"
REMEDY = "rerun the train rule"


class Gadget:
    """A plain object: weights_only refuses to build it, whatever it holds."""

    def __init__(self):
        self.value = 3


def read(path, version: int | None = 2):
    return read_tagged_file(path, "demo-format", version, EXPECTED, what="demo file", remedy=REMEDY)


def test_a_good_tagged_file_gives_its_payload(tmp_path):
    payload = {"format": "demo-format", "version": 2, "weights": torch.ones(3)}
    save_torch(payload, tmp_path / "good.pt")
    loaded = read(tmp_path / "good.pt")
    assert loaded.keys() == payload.keys() and torch.equal(loaded["weights"], torch.ones(3))
    # version None: a format without versions reads any.
    save_torch({"format": "demo-format", "version": 7}, tmp_path / "unversioned.pt")
    assert read(tmp_path / "unversioned.pt", version=None)["version"] == 7


def test_a_missing_tagged_file_is_one_error_line(tmp_path):
    path = tmp_path / "absent.pt"
    one_error_line(lambda: read(path), "demo file", path, "no such file", REMEDY)


def test_an_empty_tagged_file_is_one_error_line(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    one_error_line(lambda: read(path), "demo file", path, "empty", EXPECTED, REMEDY)


@pytest.mark.parametrize(
    "content",
    [b"bucket,mse\n0,0.5\n", b"PK\x03\x04 truncated zip", b"\x80\x02}q\x00(X\x05\x00", b"\x80\x02garbage"],
    # The last is a pickle stream that the weights-only unpickler cannot parse (not a refusal).
    ids=["text", "truncated-zip", "truncated-pickle", "corrupt-pickle"],
)
def test_a_file_that_is_not_a_torch_file_is_one_error_line(tmp_path, content):
    path = tmp_path / "foreign.pt"
    path.write_bytes(content)
    one_error_line(lambda: read(path), "demo file", path, "not a readable PyTorch file", EXPECTED, REMEDY)


@pytest.mark.parametrize(
    "payload, found",
    [
        ({"format": "another-format", "version": 2}, "found format, version"),
        ({"state_dict": {}, "epoch": 3}, "found state_dict, epoch"),
        (torch.zeros(2), "found Tensor"),
    ],
    ids=["other-tag", "untagged-dict", "not-a-dict"],
)
def test_a_torch_file_of_another_format_is_one_error_line(tmp_path, payload, found):
    path = tmp_path / "other.pt"
    save_torch(payload, path)
    one_error_line(
        lambda: read(path),
        "demo file",
        path,
        "not a diffusion-diagnostics demo file",
        found,
        EXPECTED,
        REMEDY,
    )


def test_another_version_is_one_error_line(tmp_path):
    path = tmp_path / "newer.pt"
    save_torch({"format": "demo-format", "version": 3}, path)
    one_error_line(lambda: read(path), "demo file", path, "format version 3", "reads version 2", REMEDY)


def test_a_file_holding_other_objects_is_refused_in_one_line(tmp_path):
    path = tmp_path / "gadget.pt"
    torch.save({"format": "demo-format", "version": 2, "extra": Gadget()}, path)
    one_error_line(lambda: read(path), "demo file", path, "refused", "could run code", EXPECTED, REMEDY)
