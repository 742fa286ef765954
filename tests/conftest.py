"""Shared fixtures: the repository, the tiny config, a runner for real snakemake subprocesses, the
CUDA-graph stand-in and a stand-in Hugging Face Hub. The test doubles are in doubles.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
import yaml
from filelock import FileLock
from torch.utils._python_dispatch import TorchDispatchMode

import diffusion_diagnostics.diffusion

from doubles import tiny_unet2d

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "tiny_config.yaml"
# Two cores are shared by pytest and the snakemake subprocesses: keep in-process torch to one.
torch.set_num_threads(1)

SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"


# Every output of a single-model run: DESIGN.md's and the quality diagnostics'.
OUTPUTS = [
    "results/timestep_loss.csv",
    "results/timestep_loss.png",
    "results/timestep_loss_snr.png",
    "results/nll.json",
    "results/model.json",
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
        "trajectory_part",
    }
)


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> count from the job-stats table of ``snakemake -n``."""
    table = dry_run_output.split("Job stats:", 1)[1]
    return {
        rule: int(count)
        for rule, count in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.MULTILINE)
        if rule != "total"
    }


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(items):
    """Under pytest-xdist (`make test` runs the suite on every core, --dist loadgroup), the tests
    of a module-scoped or one-per-process resource share a worker, so that it is made once: the
    SLURM cluster, the sweep. (The tiny run is shared between workers through a file: tiny_run.)"""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif "sweep_run" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("sweep"))


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
        str(REPO / "workflow" / "Snakefile"),
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
    """One complete run of the tiny config, shared by the tests that only read its outputs: under
    pytest-xdist by every worker too, the first to need it making it while the others wait."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's folder, above each worker's own
    workdir, complete = shared / "tiny_run", shared / "tiny_run.complete"
    with FileLock(shared / "tiny_run.lock"):
        if not complete.exists():
            result = run_snakemake(workdir, "--cores", "2", "--resources", "gpu=1")
            assert result.returncode == 0, result.stdout + result.stderr
            complete.touch()
    return workdir


# --- a stand-in for the Hugging Face Hub, on 127.0.0.1 ----------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class StandInHub(ThreadingHTTPServer):
    """A folder served on 127.0.0.1 as the Hub serves repository ``repo_id`` at commit COMMIT, for
    what huggingface_hub 2.4's snapshot_download requests:

    - GET  /api/models/{repo}/revision/{revision}: the model info; snapshot_download reads its ``sha``;
    - GET  /api/models/{repo}/tree/{commit}?recursive=True: every file with its size and blob id;
    - HEAD /{repo}/resolve/{commit}/{file}: the ETag, X-Repo-Commit and Content-Length headers;
    - GET  /{repo}/resolve/{commit}/{file}: the bytes.

    No file carries a Xet hash (no ``xetHash`` in the tree, no X-Xet-Hash header), so each file comes
    by a plain HTTP GET. ``requests`` records (method, path) of every request.
    """

    def __init__(self, folder: Path, repo_id: str, revisions: tuple[str, ...] = ("main",)):
        self.files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }
        self.repo_id, self.revisions = repo_id, {*revisions, COMMIT}
        self.requests: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), HubRequestHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def model_info(self) -> dict:
        return {"id": self.repo_id, "sha": COMMIT, "siblings": [{"rfilename": name} for name in self.files]}

    def tree(self) -> list[dict]:
        folders = {str(Path(name).parent) for name in self.files} - {"."}
        entries = [
            {"type": "directory", "oid": "0" * 40, "size": 0, "path": name} for name in sorted(folders)
        ]
        return entries + [
            {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
            for name, data in self.files.items()
        ]


class HubRequestHandler(BaseHTTPRequestHandler):
    server: StandInHub

    def do_GET(self):
        self.answer()

    def do_HEAD(self):
        self.answer()

    def log_message(self, *args):
        """Quiet: the tests read ``server.requests`` instead."""

    def answer(self) -> None:
        path = urlsplit(self.path).path
        self.server.requests.append((self.command, unquote(path)))
        repo = re.escape(self.server.repo_id)
        # huggingface_hub quotes a revision whole ('/' as %2F) and a file name by its parts.
        if api := re.fullmatch(rf"/api/models/{repo}/(revision|tree)/([^/]+)", path):
            kind, revision, name = api[1], unquote(api[2]), None
        elif download := re.fullmatch(rf"/{repo}/resolve/([^/]+)/(.+)", path):
            kind, revision, name = "resolve", unquote(download[1]), unquote(download[2])
        else:
            return self.send(404, {"X-Error-Code": "RepoNotFound"})
        if revision not in self.server.revisions:
            return self.send(404, {"X-Error-Code": "RevisionNotFound"})
        if kind != "resolve":
            listing = self.server.model_info() if kind == "revision" else self.server.tree()
            return self.send(200, {"Content-Type": "application/json"}, json.dumps(listing).encode())
        if name not in self.server.files:
            return self.send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        data = self.server.files[name]
        self.send(200, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT}, data)

    def send(self, status: int, headers: dict, body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def save_diffusers_folder(
    path: Path, layout: str, sample_size: int = 16, safe: bool = True, channels: int = 1, **scheduler
) -> Path:
    """A tiny UNet2DModel of ``channels`` (twice as many out for a learned_range variance) and a
    DDPMScheduler (keys: ``scheduler``) saved by diffusers' own save_pretrained: as a pipeline
    (model_index.json, unet/, scheduler/) or flat, side by side."""
    import diffusers

    learned = scheduler.get("variance_type") == "learned_range"
    unet = tiny_unet2d(
        sample_size=sample_size, in_channels=channels, out_channels=channels * (2 if learned else 1)
    )
    schedule = diffusers.DDPMScheduler(**{"num_train_timesteps": 20, **scheduler})
    if layout == "pipeline":
        diffusers.DDPMPipeline(unet=unet, scheduler=schedule).save_pretrained(path, safe_serialization=safe)
    else:
        unet.save_pretrained(path, safe_serialization=safe)
        schedule.save_pretrained(path)
    return path


def tree_digest(path: Path) -> str:
    """One hash of every file under ``path`` (names and bytes): a user's folder must not change."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()
