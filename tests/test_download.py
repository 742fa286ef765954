"""Full MNIST through torchvision's own downloader, served from 127.0.0.1 only.

The server hands out MNIST-format files that the test makes itself (valid IDX headers, gzip),
so the real download, checksum and mirror-fallback code runs without touching the internet.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import json
import logging
import socket
import struct
import threading
from pathlib import Path

import pytest
import torch

from diffusion_diagnostics import DiagnosticsError
from diffusion_diagnostics.data import load_full_mnist, load_source, load_split, save_splits

NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SIZES = {"train": 30, "t10k": 12}


def idx_bytes(kind: str, count: int, seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    if kind == "images":
        pixels = torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)
        return struct.pack(">IIII", 0x803, count, 28, 28) + pixels.numpy().tobytes()
    labels = torch.arange(count, dtype=torch.uint8) % 10
    return struct.pack(">II", 0x801, count) + labels.numpy().tobytes()


@pytest.fixture(scope="module")
def mirror_files(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """A folder of gzipped IDX files and the (filename, md5) list torchvision checks them with."""
    folder = tmp_path_factory.mktemp("mirror")
    resources = []
    for seed, name in enumerate(NAMES):
        split, kind = name.split("-")[0], "images" if "images" in name else "labels"
        data = gzip.compress(idx_bytes(kind, SIZES[split], seed), mtime=0)
        (folder / f"{name}.gz").write_bytes(data)
        resources.append((f"{name}.gz", hashlib.md5(data).hexdigest()))
    return folder, resources


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


def test_good_mirror_downloads_verifies_and_records_checksums(tmp_path, mirror_files):
    folder, resources = mirror_files
    with serve(folder) as (url, requests):
        splits = load_full_mnist(tmp_path / "data", mirrors=[url], resources=resources)
    assert set(requests) == {f"/{name}" for name, _ in resources}
    assert splits.source == "mnist"
    assert splits.images["train"].shape == (SIZES["train"], 28, 28)
    assert splits.images["heldout"].shape == (SIZES["t10k"], 28, 28)
    expected = idx_bytes("images", SIZES["train"], 0)[16:]
    assert splits.images["train"].numpy().tobytes() == expected
    manifest = save_splits(splits, tmp_path / "out", requested_source="mnist")
    assert manifest["splits"] == {"train": SIZES["train"], "heldout": SIZES["t10k"]}
    assert set(manifest["origin"]["sha256"]) >= {name for name, _ in resources}
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (
        on_disk["files"]["train.pt"]["sha256"]
        == hashlib.sha256((tmp_path / "out/train.pt").read_bytes()).hexdigest()
    )


def test_files_already_present_are_used_without_downloading(tmp_path, mirror_files):
    folder, resources = mirror_files
    with serve(folder) as (url, _):
        load_full_mnist(tmp_path, mirrors=[url], resources=resources)
    splits = load_full_mnist(tmp_path, mirrors=[closed_port_url()], resources=resources)
    assert splits.images["train"].shape[0] == SIZES["train"]


def test_corrupted_mirror_is_refused_and_the_next_one_used(tmp_path, mirror_files):
    folder, resources = mirror_files
    with serve(folder, corrupt=True) as (bad, bad_requests), serve(folder) as (good, good_requests):
        splits = load_full_mnist(tmp_path, mirrors=[bad, good], resources=resources)
    every_file = {f"/{name}" for name, _ in resources}
    assert set(bad_requests) == every_file == set(good_requests)  # each file: bad mirror first
    assert splits.images["heldout"].shape[0] == SIZES["t10k"]


def test_every_mirror_down_says_what_to_do(tmp_path, mirror_files):
    _, resources = mirror_files
    with pytest.raises(DiagnosticsError) as error:
        load_full_mnist(tmp_path, mirrors=[closed_port_url(), closed_port_url()], resources=resources)
    message = str(error.value)
    assert "\n" not in message
    assert "MNIST/raw" in message and "data.mirrors" in message and "mnist-5k" in message


def test_auto_with_every_mirror_down_falls_back_to_the_subset_loudly(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        splits = load_source("auto", tmp_path, heldout_per_class=5, mirrors=[closed_port_url()])
    assert splits.source == "mnist-5k"
    assert "embedded 5,000-digit subset" in caplog.text
    manifest = save_splits(splits, tmp_path / "out", requested_source="auto")
    assert manifest["requested_source"] == "auto" and manifest["source"] == "mnist-5k"
    assert "fallback_reason" in manifest["origin"]
    assert manifest["splits"] == {"train": 4950, "heldout": 50}


@pytest.mark.parametrize("damage", ["truncated", "foreign object"])
def test_a_damaged_split_is_one_error_line_naming_the_rule_to_rerun(tmp_path, damage):
    path = tmp_path / "heldout.pt"
    if damage == "truncated":
        torch.save({"images": torch.zeros(4, 28, 28, dtype=torch.uint8)}, path)
        path.write_bytes(path.read_bytes()[:100])
    else:
        torch.save({"images": Path("x"), "labels": torch.zeros(1)}, path)  # weights_only refuses it
    with pytest.raises(DiagnosticsError) as error:
        load_split(path)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and "rerun the download_mnist rule" in message
