"""The workflow used as a module of another (Snakemake's `module`, as snakedeploy sets it up):
an outer workflow of three lines gets every rule, under a prefix, and runs them."""

from __future__ import annotations

import csv
import os
import subprocess

import pytest
import yaml

from conftest import REPO, SNAKEMAKE, tiny_config

pytestmark = pytest.mark.workflow

OUTER_SNAKEFILE = """\
configfile: "config/config.yaml"


module diagnostics:
    snakefile:
        {snakefile!r}
    config:
        config


use rule * from diagnostics as diagnostics_*
"""


def test_an_outer_workflow_runs_the_rules_it_imports(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    (tmp_path / "Snakefile").write_text(
        OUTER_SNAKEFILE.format(snakefile=str(REPO / "workflow" / "Snakefile"))
    )
    result = subprocess.run(
        [SNAKEMAKE, "--cores", "2", "results/timestep_loss.csv"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for rule in ("download_mnist", "train", "describe_model", "timestep_loss"):
        assert f"rule diagnostics_{rule}:" in output, rule
    with open(tmp_path / "results" / "timestep_loss.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == tiny_config()["timestep_loss"]["buckets"]
    assert (tmp_path / "logs" / "timestep_loss.log").is_file()
