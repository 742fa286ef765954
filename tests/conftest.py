"""Shared fixtures: the repository, the tiny config, and a runner for real snakemake subprocesses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

import diffusion_diagnostics.diffusion

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "tiny_config.yaml"
# Two cores are shared by pytest and the snakemake subprocesses: keep in-process torch to one.
torch.set_num_threads(1)

SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"


# Every output of a single-model run: DESIGN.md's and the quality diagnostics'.
OUTPUTS = [
    "results/timestep_loss.csv",
    "results/timestep_loss.png",
    "results/noise/ddpm_endpoints.pt",
    "results/noise/ddim_endpoints.pt",
    "results/interp.png",
    "results/interp_ddim.png",
    "results/interp_real.png",
    "results/classifier/classifier.pt",
    "results/classifier/summary.json",
    "results/quality/sample_quality.csv",
    "results/quality/sample_quality.json",
    "results/quality/sample_quality.png",
    "results/quality/samples.png",
    "results/quality/interpolation_metrics.csv",
    "results/quality/interpolation_metrics.png",
    "results/quality/ddim_fidelity.csv",
    "results/quality/ddim_fidelity.png",
    "results/quality/ddim_inversion.csv",
]


# The rules that run the model: each claims `resources: gpu=1` (a GPU job on SLURM).
GPU_RULES = frozenset(
    {
        "train",
        "timestep_loss",
        "interpolation_samples",
        "train_classifier",
        "sample_quality",
        "ddim_fidelity",
        "interpolate_real_digits",
    }
)


def tiny_unet(seed: int = 0):
    """A tiny UNet with random weights everywhere: the zero-initialised output layer is re-drawn,
    otherwise the network would be the constant zero predictor."""
    from torch import nn

    from diffusion_diagnostics.unet import UNet

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = UNet(base_channels=8, channel_mults=(1, 2))
        nn.init.normal_(model.conv_out.weight, std=0.05)
        nn.init.normal_(model.conv_out.bias, std=0.05)
    return model.eval()


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> count from the job-stats table of ``snakemake -n``."""
    table = dry_run_output.split("Job stats:", 1)[1]
    return {
        rule: int(count)
        for rule, count in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.MULTILINE)
        if rule != "total"
    }


def tiny_config() -> dict:
    return yaml.safe_load(TINY_CONFIG.read_text())


def run_snakemake(workdir: Path, *args: str, config: dict | None = None, timeout: int = 600):
    """Run the real snakemake CLI on this repository's Snakefile in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "test_config.yaml"
    config_file.write_text(yaml.safe_dump(config if config is not None else tiny_config()))
    command = [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_file),
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


class NoHostReads(TorchDispatchMode):
    """Fails on reading a tensor's value back to the host (``.item()``, ``int(t)``, ``bool(t)``,
    indexing with a 0-d tensor), which on a GPU is a sync that a CUDA-graph capture cannot do."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("a captured step read a tensor's value back to the host")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def replays(monkeypatch) -> list[int]:
    """Let cuda_graphs sampling run on the CPU, through a stand-in for graphs.replay_steps that
    keeps the graph's protocol (one static input overwritten in place, the step index as a
    one-element int64 tensor, no value read back to the host) but runs each step eagerly instead
    of replaying a capture. Lists its calls."""
    calls = []

    def static_replay(step, x, num_steps, generator=None, progress=False, desc=""):
        calls.append(num_steps)
        index = torch.zeros(1, dtype=torch.long, device=x.device)
        state = x.clone()
        for i in range(num_steps):
            index.fill_(i)
            with NoHostReads():
                state.copy_(step(state, index))
        return state

    monkeypatch.setattr(diffusion_diagnostics.diffusion, "can_capture", lambda device: True)
    monkeypatch.setattr(diffusion_diagnostics.diffusion, "replay_steps", static_replay)
    return calls


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One complete run of the tiny config, shared by the tests that only read its outputs."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    result = run_snakemake(workdir, "--cores", "2", "--resources", "gpu=1")
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir
