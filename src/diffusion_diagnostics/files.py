"""Files: every output written so that a killed job never leaves a half-written file under the
final name (tensors, CSV, JSON), the CSV and JSON readers, file checksums, and the package's own
tagged files read safely (weights only, one-line errors)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import pickle
from pathlib import Path

import torch

from .errors import DiagnosticsError, first_line


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: torchvision and matplotlib pick the image format from it.
    temporary = final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (``algorithm``: any of hashlib's, e.g. md5 for MNIST's own
    checksums), read in blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_torch(payload, path: str | os.PathLike) -> None:
    """``torch.save`` through a file handle, atomically.

    Saving to a handle names the archive's inner folder "archive" rather than after the
    (temporary) file name, so equal payloads give byte-identical files.
    """
    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        torch.save(payload, handle)


def write_csv(rows: list[dict], path: str | os.PathLike, columns: list[str] | None = None) -> None:
    """Same-keyed dicts as a CSV with a header row, atomically; ``columns`` default to the first
    row's keys."""
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict]:
    """A CSV with a header row as one dict per row, every value the string written."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_json(payload, path: str | os.PathLike) -> None:
    """``payload`` as indented JSON with a final newline, atomically; text as it is (β, not
    \\u03b2); a NaN or infinite number as null, since JSON has none (Python's NaN breaks jq and
    every other strict reader)."""
    text = json.dumps(_finite_or_null(payload), indent=2, ensure_ascii=False, allow_nan=False)
    with atomic_output(path) as temporary:
        temporary.write_text(text + "\n", encoding="utf-8")


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    return value


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_tagged_file(
    path: str | os.PathLike,
    fmt: str,
    version: int | None,
    expected: str,
    what: str = "checkpoint",
    remedy: str = "",
) -> dict:
    """Load a dict saved by this package whose ``format`` is ``fmt``, safely (weights only).

    Every bad file (missing, empty, corrupt, foreign, holding code, another version) is one
    DiagnosticsError line naming ``what`` and the file, saying what was ``expected`` and, where
    given, the ``remedy``. ``version`` None: the format has no versions (the workflow's own
    intermediate files).
    """
    path, tail = Path(path), f"; {remedy}" if remedy else ""
    if not path.is_file():
        raise DiagnosticsError(f"{what} {path}: no such file{tail}")
    if path.stat().st_size == 0:
        raise DiagnosticsError(f"{what} {path}: the file is empty; {expected}{tail}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):
            raise DiagnosticsError(
                f"{what} {path}: not a readable PyTorch file, truncated or corrupt "
                f"(its pickle stream does not parse); {expected}{tail}"
            ) from None
        # weights_only refuses any object that is not a tensor or a plain container: loading the
        # file without it would have built foreign objects, possibly running code on the way.
        raise DiagnosticsError(
            f"{what} {path}: refused, it holds objects other than tensors, numbers and "
            f"strings, and unpickling them could run code; {expected}{tail}"
        ) from None
    except Exception as error:  # noqa: BLE001 - arbitrary bytes fail in arbitrary ways
        raise DiagnosticsError(
            f"{what} {path}: not a readable PyTorch file, truncated or corrupt "
            f"({first_line(error)}); {expected}{tail}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        keys = ", ".join(list(payload)[:5]) if isinstance(payload, dict) else type(payload).__name__
        raise DiagnosticsError(
            f"{what} {path}: not a diffusion-diagnostics {what} (found {keys}); {expected}{tail}"
        )
    if version is not None and payload.get("version") != version:
        raise DiagnosticsError(
            f"{what} {path}: format version {payload.get('version')} is not supported "
            f"(this package reads version {version}){tail}"
        )
    return payload
