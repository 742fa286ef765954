"""The conda environment (workflow/envs/environment.yaml) lists exactly pyproject.toml's dependencies
and its slurm and diffusers extras."""

import tomllib
import yaml

from conftest import REPO


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = set(project["dependencies"]) | set(project["optional-dependencies"]["slurm"])
    expected |= set(project["optional-dependencies"]["diffusers"])
    environment = yaml.safe_load((REPO / "workflow" / "envs" / "environment.yaml").read_text())
    pip_sections = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict)]
    assert len(pip_sections) == 1
    assert set(pip_sections[0]) == expected
