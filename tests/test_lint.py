"""The linters the project promises to pass: snakemake --lint, snakefmt and ruff."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SNAKEMAKE

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        [SNAKEMAKE, "--lint"],
        [str(BIN / "snakefmt"), "--check", "."],
        [str(BIN / "ruff"), "check", "."],
    ],
    ids=["snakemake-lint", "snakefmt", "ruff"],
)
def test_linter_is_clean(command):
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
