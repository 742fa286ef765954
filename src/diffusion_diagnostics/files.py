"""Writing outputs so that a killed job never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
from pathlib import Path


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


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_torch(payload, path: str | os.PathLike) -> None:
    """``torch.save`` through a file handle, atomically.

    Saving to a handle names the archive's inner folder "archive" rather than after the
    (temporary) file name, so equal payloads give byte-identical files.
    """
    import torch

    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        torch.save(payload, handle)


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Same-keyed dicts as a CSV with a header row, atomically."""
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
