"""A model followed through its training: the same diagnostics for every checkpoint of a run, with
common random numbers, and what changed between them.

A trajectory is a run's checkpoints, ordered by the step each holds (:func:`find_checkpoints`):
this package's checkpoints and training snapshots, diffusers folders, and the ``checkpoint-<step>/``
folders of diffusers' training script (``unet/`` and ``unet_ema/``, the scheduler in the run's
output folder). Every checkpoint is measured on the same images with the same t and the same noise
(:func:`follow`), so a difference between two checkpoints is the model's and not the draw's, and
its standard error is that of the paired differences, image by image. :func:`findings` names the
buckets of t that regress, stall or collapse.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .analysis import TimestepLossTable, assemble_table, bucket_edges, bucket_of, measure
from .bound import ExactCheck, VariationalBound
from .checkpoint import read_header
from .diffusion import DiffusionProcess, SamplingOptions
from .errors import DiagnosticsError
from .files import save_torch
from .sources import DiffusersFolder, locate_diffusers_folder

log = logging.getLogger(__name__)

WEIGHTS = ("ema", "online", "both")
# A training run of diffusers' examples/unconditional_image_generation/train_unconditional.py saves
# its state as checkpoint-<step>/ with the network in unet/ and its EMA in unet_ema/.
DIFFUSERS_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# What findings() takes for a change: more than Z standard errors of the paired differences, and
# more than MIN_CHANGE of the error itself (with exact stand-ins the standard error can be 0).
Z = 3.0
MIN_CHANGE = 0.01
# A bucket this many decades off what its neighbours in t predict has collapsed.
COLLAPSE_DECADES = 2.0


@dataclass(frozen=True)
class Checkpoint:
    """One point of a trajectory: the step its weights hold, where they are, which of them."""

    step: int
    path: Path
    weights: str  # "ema" or "online"
    scheduler: Path | None = None  # a diffusers training checkpoint's scheduler config

    @property
    def label(self) -> str:
        return f"step {self.step} ({self.weights})"


# --- finding the checkpoints ---------------------------------------------------------------------


def find_checkpoints(
    spec: str | os.PathLike, scheduler: str | os.PathLike | None = None, weights: str = "ema"
) -> list[Checkpoint]:
    """The checkpoints a glob or a folder names, ordered by step (``weights="both"``: each step's
    EMA and online weights). A checkpoint's step is what its training metadata says (this
    package's checkpoints), else the number in its name (``model-12.pt``, ``checkpoint-1500/``).
    A checkpoint with one set of weights is followed as ``ema``. ``scheduler``: the scheduler
    config of diffusers' training checkpoints, a ``scheduler_config.json`` or a folder holding one
    (in ``scheduler/`` or beside); by default the run's output folder beside them."""
    if weights not in WEIGHTS:
        raise DiagnosticsError(f"trajectory weights '{weights}' are not one of {', '.join(WEIGHTS)}")
    entries = _entries(str(spec))
    wanted = ("ema", "online") if weights == "both" else (weights,)
    found = [point for entry in entries for point in _points(entry, scheduler, wanted)]
    steps: dict[tuple[int, str], Path] = {}
    for point in found:
        twin = steps.setdefault((point.step, point.weights), point.path)
        if twin != point.path:
            raise DiagnosticsError(
                f"trajectory {spec}: {twin} and {point.path} both hold step {point.step}; keep one of them"
            )
    return sorted(found, key=lambda point: (point.step, wanted.index(point.weights)))


def _entries(spec: str) -> list[Path]:
    """The files and folders a glob or a folder names. A run's folder may itself be a diffusers
    pipeline folder (diffusers' script saves its last epoch's pipeline there, beside the
    checkpoint-<step>/ folders): its checkpoints are what it holds, the pipeline is not one."""
    if glob.has_magic(spec):
        entries = sorted(Path(match) for match in glob.glob(spec))
    elif Path(spec).is_dir():
        entries = sorted(
            entry
            for entry in Path(spec).iterdir()
            if entry.suffix == ".pt" or (entry.is_dir() and _is_model_folder(entry))
        )
        if not entries and locate_diffusers_folder(Path(spec)) is not None:
            raise DiagnosticsError(
                f"trajectory {spec}: one diffusers model, not a folder of a run's checkpoints; "
                f"diagnose it with checkpoint: {spec}, or name the folder that holds its checkpoints"
            )
    else:
        raise DiagnosticsError(
            f"trajectory {spec}: neither a glob nor a folder of checkpoints; name the folder that "
            "holds a run's checkpoints, or a glob such as runs/exp7/model-*.pt"
        )
    if not entries:
        raise DiagnosticsError(f"trajectory {spec}: matches no checkpoint; check the path or the pattern")
    return entries


def _is_model_folder(folder: Path) -> bool:
    return (
        DIFFUSERS_CHECKPOINT.fullmatch(folder.name) is not None or locate_diffusers_folder(folder) is not None
    )


def _points(entry: Path, scheduler, wanted: tuple[str, ...]) -> list[Checkpoint]:
    """The checkpoints one file or folder holds, of the ``wanted`` weights."""
    if entry.is_dir() and DIFFUSERS_CHECKPOINT.fullmatch(entry.name):
        step = int(DIFFUSERS_CHECKPOINT.fullmatch(entry.name)[1])
        held = {
            w: entry / name
            for w, name in (("ema", "unet_ema"), ("online", "unet"))
            if (entry / name).is_dir()
        }
        config = _scheduler_config(entry, scheduler)
        return [Checkpoint(step, held[w], w, config) for w in _held(entry, wanted, held)]
    if entry.is_dir():
        return (
            [Checkpoint(_step_from_name(entry), entry, "ema")] if _held(entry, wanted, {"ema": entry}) else []
        )
    header = read_header(entry) or {}
    training = header.get("training") or {}
    step = training.get("step", training.get("best_step"))
    step = step if isinstance(step, int) and step >= 0 else _step_from_name(entry)
    held = {"ema": entry, **({"online": entry} if "online_state_dict" in header else {})}
    return [Checkpoint(step, entry, w) for w in _held(entry, wanted, held)]


def _held(entry: Path, wanted: tuple[str, ...], held: Mapping[str, Path]) -> list[str]:
    """The wanted weights, all of which ``entry`` must hold: else one error line."""
    missing = [w for w in wanted if w not in held]
    if missing:
        other = sorted(set(held) - set(missing))
        instead = f"follow trajectory.weights: {other[0]} instead" if other else "it holds no weights"
        raise DiagnosticsError(f"checkpoint {entry}: holds no {' and no '.join(missing)} weights; {instead}")
    return list(wanted)


def _step_from_name(entry: Path) -> int:
    numbers = re.findall(r"\d+", entry.stem if entry.is_file() else entry.name)
    if not numbers:
        raise DiagnosticsError(
            f"checkpoint {entry}: neither its metadata nor its name says which training step it holds; "
            "name it with the step (model-1500.pt, checkpoint-1500/)"
        )
    return int(numbers[-1])


def _scheduler_config(checkpoint: Path, scheduler) -> Path:
    """A diffusers training checkpoint's scheduler config: the one given, else the run's output
    folder's (where the script saves the pipeline), said in the log either way."""
    candidates = [Path(scheduler)] if scheduler is not None else [checkpoint.parent]
    for place in candidates:
        for config in (place, place / "scheduler" / "scheduler_config.json", place / "scheduler_config.json"):
            if config.is_file():
                log.info("%s: the scheduler config is %s", checkpoint, config)
                return config
    where = (
        f"trajectory.scheduler ({scheduler})"
        if scheduler is not None
        else f"the run's folder {checkpoint.parent}"
    )
    raise DiagnosticsError(
        f"checkpoint {checkpoint}: no scheduler config in {where}; diffusers' training script saves it "
        "with the pipeline, so point trajectory.scheduler at a scheduler_config.json of that run"
    )


# --- measuring each checkpoint -------------------------------------------------------------------


def load_checkpoint_of(point: Checkpoint, device: torch.device | str = "cpu") -> DiffusionProcess:
    """The process a trajectory point names, its weights on ``device``, in eval mode."""
    from .checkpoint import load_checkpoint
    from .models import load_model, read_diffusers_folder

    if point.scheduler is not None:
        folder = DiffusersFolder(point.path.parent, "training checkpoint", point.path, point.scheduler)
        return read_diffusers_folder(folder, device)[0]
    if point.path.is_dir():
        return load_model(point.path, device)[0]
    # A checkpoint whose weights diverged is measured all the same: findings() calls it collapsed.
    return load_checkpoint(point.path, device, point.weights, finite_only=False)[0]


@dataclass
class Measured:
    """One checkpoint's diagnostics: the loss table (errors per bucket, their standard errors,
    log-SNR, the bound), each image's ε-MSE (for paired comparisons between checkpoints) and the
    DDIM decodings of the fixed starting noises."""

    point: Checkpoint
    table: TimestepLossTable
    t: torch.Tensor
    eps: torch.Tensor
    samples: torch.Tensor

    def to_state(self) -> dict:
        """Tensors, numbers and strings only, which ``torch.load(weights_only=True)`` reads back:
        how a job that measured part of a trajectory hands it on."""
        point = {**asdict(self.point), "path": str(self.point.path)}
        point["scheduler"] = None if self.point.scheduler is None else str(self.point.scheduler)
        return {
            "point": point,
            "table": asdict(self.table),
            "t": self.t,
            "eps": self.eps,
            "samples": self.samples,
        }

    @classmethod
    def from_state(cls, state: Mapping) -> Measured:
        point = dict(state["point"])
        point["path"] = Path(point["path"])
        point["scheduler"] = None if point["scheduler"] is None else Path(point["scheduler"])
        table = dict(state["table"])
        bound = dict(table.pop("bound"))
        exact = bound.pop("exact_check")
        bound = VariationalBound(**bound, exact_check=None if exact is None else ExactCheck(**exact))
        return cls(
            Checkpoint(**point),
            TimestepLossTable(**table, bound=bound),
            state["t"],
            state["eps"],
            state["samples"],
        )


def share(points: list[Checkpoint], part: int, parts: int) -> list[Checkpoint]:
    """The checkpoints job ``part`` of ``parts`` follows: consecutive ones, as many as the others
    (±1); with fewer checkpoints than jobs, some follow none."""
    if not 0 <= part < parts:
        raise DiagnosticsError(f"trajectory part {part} is not one of 0 … {parts - 1}")
    return points[part * len(points) // parts : (part + 1) * len(points) // parts]


def follow(
    points: list[Checkpoint],
    images: torch.Tensor,
    noises: torch.Tensor,
    buckets: int = 10,
    batch_size: int = 250,
    seed: int = 0,
    ddim_steps: int = 20,
    device: torch.device | str = "cpu",
    options: SamplingOptions | None = None,
    load: Callable[[Checkpoint, torch.device], DiffusionProcess] = load_checkpoint_of,
    reference: tuple[Checkpoint, DiffusionProcess] | None = None,
) -> list[Measured]:
    """Each checkpoint's diagnostics on ``images`` (in the models' size, [-1, 1]) with the same t
    and noise for all (the analysis's stratified draws from ``seed``), and the DDIM decoding of the
    same ``noises``. The checkpoints must share one process and sample shape, the ``reference``
    checkpoint's where given (a job that follows part of a trajectory), else the first's."""
    device = torch.device(device)
    batches = list(images.split(batch_size))
    first = None if reference is None else (reference[0], reference[1].config, reference[1].sample_shape)
    measured = []
    for point in points:
        diffusion = load(point, device)
        if first is None:
            first = (point, diffusion.config, diffusion.sample_shape)
        _check_alike(first, point, diffusion)
        edges = bucket_edges(diffusion.timesteps, buckets)
        with torch.inference_mode():
            values = measure(
                diffusion, batches, len(batches), edges, "stratified", seed, device, 0, finite_only=False
            )
            table = assemble_table(diffusion, values, edges)
        try:
            samples = diffusion.sample_ddim(noises.to(device), ddim_steps, options=options).cpu()
        except DiagnosticsError as error:  # a collapsed checkpoint: findings() reports it
            log.warning("%s: no samples, %s", point.label, error)
            samples = torch.full((len(noises), *diffusion.sample_shape), math.nan)
        log.info("%s: bound %.4f bits/dim, ε-MSE per bucket %s", point.label, table.bound.total_bpd,
                 [round(float(e), 6) for e in table.mean])  # fmt: skip
        measured.append(Measured(point, table, values.values["t"], values.values["eps"], samples))
        del diffusion
    return measured


def save_measured(measured: list[Measured], path: str | os.PathLike) -> None:
    """A job's part of a trajectory, for :func:`read_measured`."""
    save_torch([one.to_state() for one in measured], path)


def read_measured(paths: list[str | os.PathLike]) -> list[Measured]:
    """The parts :func:`save_measured` wrote, in the order given (each part's checkpoints follow the
    previous part's)."""
    return [Measured.from_state(state) for path in paths for state in torch.load(path, weights_only=True)]


def _check_alike(first, point: Checkpoint, diffusion: DiffusionProcess) -> None:
    """One trajectory, one process and one image size: else the numbers do not compare."""
    first_point, config, shape = first
    if diffusion.sample_shape != shape:
        raise DiagnosticsError(
            f"trajectory: {point.path} makes images of shape {list(diffusion.sample_shape)}, "
            f"{first_point.path} of {list(shape)}; a trajectory is one run's checkpoints"
        )
    if diffusion.config != config:
        raise DiagnosticsError(
            f"trajectory: {point.path} has another process ({diffusion.describe()}) than {first_point.path} "
            f"({config.summary()}); a trajectory is one run's checkpoints"
        )


# --- the tables ------------------------------------------------------------------------------------


def trajectory_rows(measured: list[Measured]) -> list[dict]:
    """trajectory.csv: one row per checkpoint and bucket."""
    rows = []
    for one in measured:
        for row in one.table.rows():
            rows.append(
                {
                    "step": one.point.step,
                    "weights": one.point.weights,
                    "bucket": row["bucket"],
                    "t_start": row["t_start"],
                    "t_end": row["t_end"],
                    "log_snr_start": row["log_snr_start"],
                    "log_snr_end": row["log_snr_end"],
                    "eps_mse": row["mse"],
                    "eps_std_error": row["std_error"],
                    "x0_mse": row["x0_mse"],
                    "x0_std_error": row["x0_std_error"],
                    "v_mse": row["v_mse"],
                    "v_std_error": row["v_std_error"],
                    "vb_bpd": row["vb_bpd"],
                    "vb_std_error": row["vb_std_error"],
                    "vb_share": row["vb_share"],
                }
            )
    return rows


def bound_rows(measured: list[Measured]) -> list[dict]:
    """bound.csv: each checkpoint's bound and its terms."""
    return [
        {
            "step": one.point.step,
            "weights": one.point.weights,
            **{
                key: getattr(one.table.bound, key)
                for key in ("total_bpd", "std_error", "prior_bpd", "decoder_bpd", "kl_bpd", "num_images")
            },
        }
        for one in measured
    ]


# --- what changed ----------------------------------------------------------------------------------


def findings(measured: list[Measured]) -> dict:
    """The buckets of t that regress, stall or collapse, for each set of weights followed.

    - collapsed: non-finite, or COLLAPSE_DECADES decades off what its neighbours in t predict,
      at a checkpoint (a checkpoint whose weights diverged collapses in every bucket);
    - regressing: the last checkpoint's ε-MSE is above the lowest of the earlier ones by more than
      Z standard errors of the paired differences (same images, t and noise) and by MIN_CHANGE;
    - stalled: over the last third of the checkpoints it neither fell nor rose by that much, while
      another bucket fell.
    A bucket is compared only between checkpoints where it has not collapsed. Each finding names
    the bucket, its t range, the steps and the numbers.
    """
    result = {"regressing": [], "stalled": [], "collapsed": [], "rules": _rules()}
    for weights in dict.fromkeys(one.point.weights for one in measured):
        run = [one for one in measured if one.point.weights == weights]
        collapsed = _collapsed(run)
        result["collapsed"] += collapsed
        broken = {(item["bucket"], item["from_step"]) for item in collapsed}
        regressing = _regressing(run, broken)
        result["regressing"] += regressing
        result["stalled"] += _stalled(run, broken, {item["bucket"] for item in regressing})
    return result


def _rules() -> dict:
    return {
        "z": Z,
        "min_change": MIN_CHANGE,
        "collapse_decades": COLLAPSE_DECADES,
        "stall_window": "last third",
    }


def _change(run: list[Measured], before: int, after: int, bucket: int) -> tuple[float, float]:
    """The change of a bucket's ε-MSE from checkpoint ``before`` to ``after``, and its standard error
    from the paired per-image differences."""
    table = run[0].table
    edges = torch.cat([table.t_start, table.t_end[-1:] + 1])
    inside = bucket_of(run[0].t, edges) == bucket
    differences = run[after].eps[inside] - run[before].eps[inside]
    std_error = float(differences.std() / math.sqrt(len(differences))) if len(differences) > 1 else math.nan
    return float(differences.mean()), std_error


def _significant(change: float, std_error: float, reference: float) -> bool:
    return (
        abs(change) > Z * (std_error if math.isfinite(std_error) else 0.0)
        and abs(change) > MIN_CHANGE * reference
    )


def _item(run: list[Measured], bucket: int, before: int, after: int, change: float, std_error: float) -> dict:
    table = run[0].table
    return {
        "bucket": bucket,
        "t_start": int(table.t_start[bucket]),
        "t_end": int(table.t_end[bucket]),
        "weights": run[0].point.weights,
        "from_step": run[before].point.step,
        "to_step": run[after].point.step,
        "from_eps_mse": float(run[before].table.mean[bucket]),
        "to_eps_mse": float(run[after].table.mean[bucket]),
        "change": change,
        "std_error": std_error,
    }


def _regressing(run: list[Measured], broken: set[tuple[int, int]]) -> list[dict]:
    found = []
    last = len(run) - 1
    for bucket in range(len(run[0].table.mean)):
        earlier = [c for c in range(last) if (bucket, run[c].point.step) not in broken]
        if (bucket, run[last].point.step) in broken or not earlier:
            continue
        best = min(earlier, key=lambda c: float(run[c].table.mean[bucket]))
        change, std_error = _change(run, best, last, bucket)
        if change > 0 and _significant(change, std_error, float(run[best].table.mean[bucket])):
            found.append(_item(run, bucket, best, last, change, std_error))
    return found


def _stalled(run: list[Measured], broken: set[tuple[int, int]], regressing: set[int]) -> list[dict]:
    if len(run) < 3:
        return []
    last = len(run) - 1
    start = last - max(1, math.ceil(len(run) / 3))
    changes = {}
    for bucket in range(len(run[0].table.mean)):
        if {(bucket, run[start].point.step), (bucket, run[last].point.step)} & broken:
            continue
        change, std_error = _change(run, start, last, bucket)
        changes[bucket] = (
            change,
            std_error,
            _significant(change, std_error, float(run[start].table.mean[bucket])),
        )
    improving = {b for b, (change, _, significant) in changes.items() if significant and change < 0}
    return [
        _item(run, bucket, start, last, change, std_error)
        for bucket, (change, std_error, significant) in changes.items()
        if bucket not in regressing and not significant and improving - {bucket}
    ]


def _collapsed(run: list[Measured]) -> list[dict]:
    found = []
    for index, one in enumerate(run):
        errors = one.table.mean.double()
        for bucket in range(len(errors)):
            if not math.isfinite(float(errors[bucket])) or _off_its_neighbours(errors, bucket):
                item = _item(run, bucket, index, index, math.nan, math.nan)
                found.append(
                    {key: value for key, value in item.items() if key not in ("change", "std_error")}
                )
    return found


def _off_its_neighbours(errors: torch.Tensor, bucket: int) -> bool:
    """Whether log10 of the bucket's error is COLLAPSE_DECADES from what its neighbours in t
    predict: their geometric mean inside, a log-linear extrapolation at the ends."""
    logs = errors.clamp(min=1e-300).log10()
    last = len(errors) - 1
    if last < 2:
        return False
    if 0 < bucket < last:
        predicted = (logs[bucket - 1] + logs[bucket + 1]) / 2
    elif bucket == 0:
        predicted = 2 * logs[1] - logs[2]
    else:
        predicted = 2 * logs[last - 1] - logs[last - 2]
    return bool(torch.isfinite(predicted)) and abs(float(logs[bucket] - predicted)) >= COLLAPSE_DECADES
