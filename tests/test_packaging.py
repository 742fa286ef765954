"""The conda environments agree with pyproject.toml: the user's (environment.yml) installs the
package itself with extras it has, and the rules' (workflow/envs/environment.yaml), which runs the
package from src/ without installing it, lists exactly its dependencies and its slurm and diffusers
extras."""

import re

import tomllib
import yaml

from conftest import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def conda_environment(path):
    environment = yaml.safe_load((REPO / path).read_text())
    pip_sections = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict)]
    assert len(pip_sections) == 1, path
    return environment, pip_sections[0]


def test_the_users_environment_installs_this_package_with_its_extras():
    environment, pip = conda_environment("environment.yml")
    assert environment["name"] == PROJECT["name"]
    [requirement] = pip
    match = re.fullmatch(r"-e \.\[(?P<extras>[a-z,]+)\]", requirement)
    assert match, requirement
    assert set(match["extras"].split(",")) <= set(PROJECT["optional-dependencies"])
    python = next(d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert PROJECT["requires-python"] in python


def test_the_rules_environment_mirrors_pyproject():
    environment, pip = conda_environment("workflow/envs/environment.yaml")
    extras = PROJECT["optional-dependencies"]
    assert set(pip) == set(PROJECT["dependencies"]) | set(extras["slurm"]) | set(extras["diffusers"])
    users, _ = conda_environment("environment.yml")
    assert environment["dependencies"][0] == users["dependencies"][0]  # the same Python
    assert environment["channels"] == users["channels"]
