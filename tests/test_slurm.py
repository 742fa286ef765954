"""The workflow on a real SLURM cluster through profiles/slurm.

A throw-away one-node cluster (munged, slurmctld, slurmd on 127.0.0.1, one fake GPU) is started
by tests/slurm/start-cluster.sh for the session and stopped by tests/slurm/stop-cluster.sh. One
sweep of the tiny config runs through `snakemake --profile profiles/slurm`: a model trained as the
tiny config trains it, with every output of a single run, beside a given checkpoint that goes as
far as the comparison. The tests check, from the plugin's sbatch lines and from SLURM's own job
records, that the GPU rules were GPU jobs (--gpus=1, TresPerJob=gres:gpu:1), the CPU rules CPU
jobs and download_mnist no job at all; that each model's work ran as jobs of its own; that the
trained model's results equal those of the local run of the tiny config; and, in a second run,
that a job failing on the cluster fails the run.

Where SLURM cannot run (not root, no apt-get, the start script fails) the tests are SKIPPED with
the reason, except with CI=true on a root machine with apt-get: there that is a FAILURE.
"""

from __future__ import annotations

import collections
import csv
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from diffusion_diagnostics.checkpoint import save_checkpoint
from diffusion_diagnostics.unet import UNet

from conftest import GPU_RULES, OUTPUTS, REPO, TINY_CONFIG

pytestmark = pytest.mark.slurm

SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILE = REPO / "profiles" / "slurm"
START_SCRIPT = REPO / "tests" / "slurm" / "start-cluster.sh"
STOP_SCRIPT = REPO / "tests" / "slurm" / "stop-cluster.sh"

CPU_RULES = {
    "compare_timestep_loss",
    "describe_model",
    "noise_endpoints",
    "plot_timestep_loss",
    "plot_timestep_loss_snr",
    "interpolation_grid_ddpm",
    "interpolation_grid_ddim",
    "interpolation_metrics",
}
# The sweep's two models: TRAINED is trained with the tiny config's settings, so its files equal
# the local single-model run's; GIVEN, a checkpoint file, goes as far as the comparison.
TRAINED, GIVEN = "trained", "given"
# Jobs the run sends to SLURM: TRAINED's whole DAG (noise_endpoints once per sampler,
# interpolation_samples once per decoded grid: the tiny config's three metric variants and the
# DDIM picture's grid), GIVEN's describe_model and timestep_loss, and the comparison.
EXPECTED_SUBMISSIONS = collections.Counter(
    {
        # (no trajectory: a sweep follows none unless trajectory.checkpoints names one)
        **dict.fromkeys((GPU_RULES - {"trajectory_part"}) | CPU_RULES, 1),
        "noise_endpoints": 2,
        "interpolation_samples": 4,
        "describe_model": 2,
        "timestep_loss": 2,
        "compare_timestep_loss": 1,
    }
)
# The non-default partition of the test cluster: a job lands there only if the override reached sbatch.
PARTITION = "test"
RUN_TIMEOUT_S = 600

IN_CI = os.environ.get("CI") == "true"


# --- the cluster --------------------------------------------------------------------------------


@dataclass
class Cluster:
    state: Path | None = None
    problem: str | None = None
    must_fail: bool = False

    def require(self) -> None:
        """Skip (or, in CI on a capable machine, fail) when the cluster is not up."""
        if self.problem is None:
            return
        if self.must_fail:
            pytest.fail(f"CI=true on a root machine with apt-get, but: {self.problem}", pytrace=False)
        pytest.skip(self.problem)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _why_not_here() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"SLURM test cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "SLURM test cluster needs root (it installs slurm-wlm/munge and writes /etc/slurm)"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = _why_not_here()
    if reason is not None:
        yield Cluster(problem=reason)
        return
    must_fail = IN_CI and shutil.which("apt-get") is not None
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        yield Cluster(
            problem='snakemake-executor-plugin-slurm is not installed (pip install -e ".[slurm]")',
            must_fail=must_fail,
        )
        return
    # Not pytest's tmp_path: munged wants every directory above its socket searchable by all.
    state = Path(tempfile.mkdtemp(prefix="snakemake-slurm-test-"))
    try:
        started = subprocess.run(
            ["bash", str(START_SCRIPT), str(state)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        problem = None
        if started.returncode != 0:
            problem = (
                f"tests/slurm/start-cluster.sh failed (exit {started.returncode}):\n"
                f"{_tail(started.stdout + started.stderr)}"
            )
    except subprocess.TimeoutExpired as error:
        problem = f"tests/slurm/start-cluster.sh did not finish in {error.timeout} s"
    try:
        yield Cluster(state=state, problem=problem, must_fail=must_fail)
    finally:
        stopped = subprocess.run(
            ["bash", str(STOP_SCRIPT), str(state)], capture_output=True, text=True, timeout=120
        )
        if stopped.returncode == 0:
            shutil.rmtree(state, ignore_errors=True)
        else:
            raise RuntimeError(
                f"stop-cluster.sh {state} failed (exit {stopped.returncode}):\n"
                f"{stopped.stdout}{stopped.stderr}"
            )


# --- running snakemake --------------------------------------------------------------------------


@dataclass
class SlurmJob:
    rule: str
    sbatch: list[str]  # the plugin's sbatch arguments up to --wrap
    record: dict[str, str] = field(default_factory=dict)  # `scontrol -o show job` right after the run


@dataclass
class Run:
    workdir: Path
    returncode: int
    output: str
    jobs: list[SlurmJob] = field(default_factory=list)

    def describe(self) -> str:
        return f"snakemake in {self.workdir} exited {self.returncode}; output ends:\n{_tail(self.output, 60)}"


def _snakemake(workdir: Path, *args: str, configfile: Path = TINY_CONFIG) -> Run:
    env = {key: value for key, value in os.environ.items() if key != "SNAKEMAKE_PROFILE"}
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--configfile",
        str(configfile),
        *args,
    ]
    try:
        done = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        output = (
            error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else error.stdout or ""
        )
        pytest.fail(f"{shlex.join(command)} ran over {RUN_TIMEOUT_S} s; output ends:\n{_tail(output, 60)}")
    (workdir / "snakemake-output.txt").write_text(done.stdout)
    return Run(workdir=workdir, returncode=done.returncode, output=done.stdout)


SBATCH_LINE = re.compile(r"^sbatch call: (sbatch .*?) --wrap=", re.MULTILINE)
SUBMITTED_LINE = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: [^)]*/slurm_logs/rule_(\w+)/")


def _rule_of_comment(comment: str) -> str:
    """The plugin's --comment is rule_<rule> or rule_<rule>_wildcards_<values>."""
    assert comment.startswith("rule_"), comment
    return comment[len("rule_") :].split("_wildcards_")[0]


def _slurm_records(job_ids: list[str]) -> dict[str, dict[str, str]]:
    records = {}
    for job_id in job_ids:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
        records[job_id] = dict(re.findall(r"(\S+?)=(\S*)", shown.stdout)) if shown.returncode == 0 else {}
    return records


def _cluster_snakemake(workdir: Path, *args: str, configfile: Path = TINY_CONFIG) -> Run:
    """snakemake --profile profiles/slurm with the overrides a one-node test cluster needs."""
    run = _snakemake(
        workdir,
        "--profile",
        str(PROFILE),
        # The documented way to choose the partition (and account) without editing the profile.
        "--default-resources",
        f"slurm_partition={PARTITION}",
        # No slurmdbd here: sacct cannot answer, squeue can (MinJobAge=600 s on this cluster).
        "--slurm-status-command",
        "squeue",
        # Seconds, not the 40 s a real cluster gets, before the first status poll.
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--latency-wait",
        "5",
        "--verbose",
        *args,
        configfile=configfile,
    )
    sbatch_lines = [shlex.split(line) for line in SBATCH_LINE.findall(run.output)]
    submitted = SUBMITTED_LINE.findall(run.output)
    records = _slurm_records([job_id for job_id, _ in submitted])
    for arguments in sbatch_lines:
        rule = _rule_of_comment(arguments[arguments.index("--comment") + 1])
        run.jobs.append(SlurmJob(rule=rule, sbatch=arguments))
    # Attach SLURM's record to the sbatch line of the same rule, in submission order.
    by_rule = collections.defaultdict(list)
    for job_id, _ in submitted:
        record = records[job_id]
        by_rule[_rule_of_comment(record.get("Comment", "rule_?"))].append(record)
    for job in run.jobs:
        if by_rule[job.rule]:
            job.record = by_rule[job.rule].pop(0)
    return run


def _sweep_config(workdir: Path) -> Path:
    """The tiny config with the two models (GIVEN's checkpoint written into ``workdir``)."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    torch.manual_seed(0)
    given = workdir / "given_model.pt"
    save_checkpoint(given, UNet(**config["model"]), config["diffusion"])
    config["models"] = {TRAINED: {}, GIVEN: {"checkpoint": str(given)}}
    configfile = workdir / "sweep_config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    return configfile


def _as_trained_model(local_path: str) -> str:
    """Where the sweep writes TRAINED's copy of a single run's file: results/<model>/…; the
    judge, results/classifier/, is one for all models."""
    if local_path.startswith("results/classifier/"):
        return local_path
    return local_path.replace("results/", f"results/{TRAINED}/", 1)


TRAINED_FILES = ["results/train/best_model.pt", "results/train/history.csv", "results/train/loss_curve.png"]


@pytest.fixture(scope="module")
def cluster_run(slurm_cluster, tmp_path_factory):
    """The sweep through the profile; None without a cluster (the tests then skip or fail)."""
    if slurm_cluster.problem is not None:
        return None
    workdir = tmp_path_factory.mktemp("cluster")
    targets = [_as_trained_model(name) for name in [*OUTPUTS, *TRAINED_FILES]]
    configfile = _sweep_config(workdir)
    return _cluster_snakemake(workdir, *targets, "results/compare/timestep_loss.png", configfile=configfile)


def _succeeded(cluster: Cluster, run: Run | None) -> Run:
    """In each test body, so that a missing cluster is that test's SKIP (or, in CI, its FAIL)."""
    cluster.require()
    assert run is not None
    assert run.returncode == 0, run.describe()
    return run


def _profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def _option(arguments: list[str], *names: str) -> str | None:
    """The value of an sbatch option given as `-x V`, `--xx V` or `--xx=V`."""
    for index, argument in enumerate(arguments):
        for name in names:
            if argument == name and index + 1 < len(arguments):
                return arguments[index + 1]
            if argument.startswith(name + "="):
                return argument[len(name) + 1 :]
    return None


def _slurm_minutes(time_limit: str) -> int:
    """SLURM's TimeLimit ([D-]HH:MM:SS) in minutes."""
    days, _, clock = time_limit.rpartition("-")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + minutes + (seconds > 0)


# --- the tests ----------------------------------------------------------------------------------


def test_cluster_run_succeeds(slurm_cluster, cluster_run):
    _succeeded(slurm_cluster, cluster_run)


def test_gpu_rules_are_gpu_jobs_and_cpu_rules_cpu_jobs(slurm_cluster, cluster_run):
    cluster_run = _succeeded(slurm_cluster, cluster_run)
    submitted = collections.Counter(job.rule for job in cluster_run.jobs)
    assert submitted == EXPECTED_SUBMISSIONS, cluster_run.describe()
    for job in cluster_run.jobs:
        line = shlex.join(job.sbatch)
        assert job.record, f"SLURM has no record of the {job.rule} job submitted by: {line}"
        assert job.record.get("JobState") == "COMPLETED", (job.rule, job.record)
        assert _option(job.sbatch, "-p", "--partition") == PARTITION, line
        assert job.record.get("Partition") == PARTITION, (job.rule, job.record)
        if job.rule in GPU_RULES:
            assert "--gpus=1" in job.sbatch, f"{job.rule} is a GPU rule, but: {line}"
            assert not any(argument.startswith("--gres") for argument in job.sbatch), line
            assert job.record.get("TresPerJob") == "gres:gpu:1", (job.rule, job.record)
        else:
            assert job.rule in CPU_RULES, job.rule
            assert "gpu" not in line.lower(), f"{job.rule} is a CPU rule, but: {line}"
            tres = {key: value for key, value in job.record.items() if "tres" in key.lower()}
            assert "gpu" not in str(tres), (job.rule, tres)


def test_profile_resources_reach_sbatch(slurm_cluster, cluster_run):
    """Each rule's runtime, mem_mb, cpus_per_task (set-resources) arrive as -t, --mem, --cpus-per-task."""
    cluster_run = _succeeded(slurm_cluster, cluster_run)
    wanted = _profile()["set-resources"]
    threads = yaml.safe_load(TINY_CONFIG.read_text())["threads"]
    for job in cluster_run.jobs:
        resources = wanted[job.rule]
        cpus = threads if resources["cpus_per_task"] == "threads" else int(resources["cpus_per_task"])
        assert _option(job.sbatch, "-t", "--time") == str(resources["runtime"]), job.sbatch
        assert _option(job.sbatch, "--mem") == str(resources["mem_mb"]), job.sbatch
        assert _option(job.sbatch, "--cpus-per-task") == str(cpus), job.sbatch
        assert _slurm_minutes(job.record["TimeLimit"]) == resources["runtime"], job.record
        assert job.record.get("MinMemoryNode") == f"{resources['mem_mb']}M", job.record


def test_download_runs_on_the_submit_host(slurm_cluster, cluster_run):
    cluster_run = _succeeded(slurm_cluster, cluster_run)
    assert re.search(r"^localrule download_mnist:", cluster_run.output, re.MULTILINE), cluster_run.describe()
    assert all(job.rule != "download_mnist" for job in cluster_run.jobs)
    assert "rule_download_mnist" not in cluster_run.output
    assert not (cluster_run.workdir / ".snakemake" / "slurm_logs" / "rule_download_mnist").exists()


def _files(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for top in ("results", "resources")
        for path in (root / top).rglob("*")
        if path.is_file()
    }


def _number_or_text(value: str) -> float | str:
    """A CSV cell as a number where it is one (the objective column, say, is a name)."""
    try:
        return float(value)
    except ValueError:
        return value


def _csv_rows(path: Path) -> list[dict[str, float | str]]:
    with path.open(newline="") as handle:
        return [{key: _number_or_text(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def test_cluster_results_equal_local_results(slurm_cluster, cluster_run, request):
    cluster_run = _succeeded(slurm_cluster, cluster_run)
    # conftest.py's run of the same config on this machine (--cores 2 --resources gpu=1).
    tiny_run = request.getfixturevalue("tiny_run")
    # The sweep follows no trajectory (see EXPECTED_SUBMISSIONS), so the local one has no counterpart.
    local_files = {
        name
        for name in _files(tiny_run)
        if name.startswith("results/")
        and "/benchmarks/" not in name
        and not name.startswith("results/trajectory/")
    }
    assert {*OUTPUTS, *TRAINED_FILES} <= local_files
    cluster_files = _files(cluster_run.workdir)
    assert {_as_trained_model(name) for name in local_files} <= cluster_files, sorted(
        {_as_trained_model(name) for name in local_files} - cluster_files
    )

    cluster_loss = _csv_rows(cluster_run.workdir / _as_trained_model("results/timestep_loss.csv"))
    local_loss = _csv_rows(tiny_run / "results" / "timestep_loss.csv")
    assert len(cluster_loss) == len(local_loss) > 0
    for cluster_row, local_row in zip(cluster_loss, local_loss, strict=True):
        assert cluster_row.keys() == local_row.keys()
        for key in local_row:
            local = local_row[key]
            same = local if isinstance(local, str) else pytest.approx(local, rel=1e-9, abs=1e-12)
            assert cluster_row[key] == same, (key, cluster_row, local_row)

    for sampler in ("ddpm", "ddim"):
        relative = f"results/noise/{sampler}_endpoints.pt"
        on_cluster = torch.load(cluster_run.workdir / _as_trained_model(relative), weights_only=True)
        local = torch.load(tiny_run / relative, weights_only=True)
        for key in ("z0", "z1"):
            assert torch.equal(on_cluster[key], local[key]), f"{relative}: {key} differs"


def test_each_model_runs_as_jobs_of_its_own_side_by_side(slurm_cluster, cluster_run):
    """With one GPU on this node the GPU jobs run one after another, so side by side shows as:
    the given model's first job (describe_model) is submitted at the start, before the other
    model's training has ended. The comparison holds both models' rows."""
    cluster_run = _succeeded(slurm_cluster, cluster_run)
    models = collections.defaultdict(set)
    for job in cluster_run.jobs:
        models[job.record.get("Comment", "").partition("_wildcards_")[2]].add(job.rule)
    assert models[GIVEN] == {"describe_model", "timestep_loss"}, cluster_run.describe()
    assert models[TRAINED] >= {"train", "describe_model", "timestep_loss", "sample_quality"}
    job_ids = [job.record["JobId"] for job in cluster_run.jobs]
    assert len(set(job_ids)) == len(job_ids)
    [given_first] = [
        job.record
        for job in cluster_run.jobs
        if job.rule == "describe_model" and GIVEN in job.record["Comment"]
    ]
    [training] = [job.record for job in cluster_run.jobs if job.rule == "train"]
    assert given_first["SubmitTime"] < training["EndTime"], (given_first, training)

    results = cluster_run.workdir / "results"
    combined = _csv_rows_by_model(results / "compare" / "timestep_loss.csv")
    for model in (TRAINED, GIVEN):
        assert combined[model] == _csv_rows(results / model / "timestep_loss.csv"), model
    assert (results / "compare" / "timestep_loss.png").stat().st_size > 0
    assert not (results / GIVEN / "train").exists()


def test_failing_cluster_job_fails_the_run(slurm_cluster, cluster_run, tmp_path):
    """A checkpoint that is no checkpoint: describe_model, the first rule that reads it, fails
    inside its SLURM job, and nothing after it is submitted."""
    slurm_cluster.require()
    # The data from the successful run: download_mnist (local, seconds) need not run again.
    mnist = cluster_run.workdir / "resources" / "mnist" if cluster_run is not None else None
    if mnist is not None and mnist.is_dir():
        shutil.copytree(mnist, tmp_path / "resources" / "mnist")
    garbage = tmp_path / "not_a_checkpoint.pt"
    # Text that the unpickler rejects outright. (Some other garbage, e.g. text starting with "t",
    # makes pickle raise IndexError, which load_checkpoint does not turn into its one-line error.)
    garbage.write_text("garbage, not a checkpoint\n")

    run = _cluster_snakemake(tmp_path, "results/timestep_loss.csv", "--config", f"checkpoint={garbage}")

    assert run.returncode != 0, run.describe()
    # Snakemake's error report names the rule and the SLURM job that failed.
    report = re.search(
        r"^Error in rule describe_model:\n\s+message: SLURM-job '(\d+)' failed", run.output, re.M
    )
    assert report, run.describe()
    [job] = [job for job in run.jobs if job.rule == "describe_model"]
    assert "--gpus" not in job.sbatch, job.sbatch
    assert job.record.get("JobId") == report.group(1), job.record
    assert job.record.get("JobState") == "FAILED", job.record
    assert not [job for job in run.jobs if job.rule == "timestep_loss"], run.describe()
    # The rule's own error line is in the job's SLURM log, which the error report names.
    slurm_log = Path(job.record["StdOut"])
    assert str(slurm_log) in run.output, run.describe()
    assert "error in rule describe_model:" in slurm_log.read_text(), _tail(slurm_log.read_text())
    assert not (tmp_path / "results" / "model.json").exists()
    assert not (tmp_path / "results" / "timestep_loss.csv").exists()


def _csv_rows_by_model(path: Path) -> dict[str, list[dict[str, float | str]]]:
    rows: dict[str, list[dict[str, float | str]]] = collections.defaultdict(list)
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            model = row.pop("model")
            rows[model].append({key: _number_or_text(value) for key, value in row.items()})
    return rows
