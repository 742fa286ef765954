"""The training loop behind the ``train`` rule: AdamW, EMA weights, validation, snapshots, resume.

Every random draw (initial weights, data order, t, noise) comes from seeded generators whose
states are saved with the model, so a run that is killed and resumed ends with the same weights,
bit for bit on a CPU, as one that ran straight through. Validation records the EMA network's error
per bucket of t beside its mean, and snapshots of its weights every ``snapshot_every`` steps make
the run a trajectory (.trajectory).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .analysis import bucket_edges, bucket_means
from .checkpoint import read_header, save_checkpoint
from .diffusion import DiffusionProcess
from .errors import DiagnosticsError
from .files import read_tagged_file, save_torch, write_csv
from .runtime import autocast_dtype, progress_bar
from .unet import UNet

log = logging.getLogger(__name__)

STATE_FORMAT = "diffusion-diagnostics-train-state"
HISTORY_COLUMNS = ["step", "train_loss", "lr", "val_loss"]
SNAPSHOT_NAME = "step-{step:07d}.pt"


def history_columns(buckets: int) -> list[str]:
    """The history's columns: per step, then the validation's ε-MSE per bucket of t."""
    return [*HISTORY_COLUMNS, *(f"val_eps_mse_bucket_{bucket}" for bucket in range(buckets))]


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    cooldown_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    val_every: int = 250
    val_size: int = 500
    save_every: int = 250
    log_every: int = 50
    # Keep the EMA (and online) weights every this many steps as a snapshot; 0: none.
    snapshot_every: int = 0
    seed: int = 0
    # bfloat16: forward and backward passes under autocast (weights, optimizer and EMA stay
    # float32); faster on hardware with bf16 matrix units (GPUs, CPUs with AMX).
    precision: str = "float32"


def fingerprint(model_config: dict, diffusion_config: dict, config: TrainConfig, data_sha: str) -> str:
    """Identifies a run up to its length, so that a longer ``steps`` resumes a shorter run.

    The cool-down belongs to the length: it is where the budget ends, so a run trained at a
    constant rate can be resumed with a cool-down added (as warm-up/stable/decay schedules do).
    The precision is free too, so that a run can go on on other hardware.
    """
    settings = asdict(config)
    for free in (
        "steps",
        "cooldown_steps",
        "val_every",
        "save_every",
        "log_every",
        "snapshot_every",
        "precision",
    ):
        settings.pop(free)
    text = json.dumps([model_config, diffusion_config, settings, data_sha], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EpochSampler:
    """Batch indices for step s: a fresh seeded permutation each epoch, so any step is recomputable."""

    def __init__(self, size: int, batch_size: int, seed: int):
        if batch_size > size:
            raise DiagnosticsError(
                f"train.batch_size = {batch_size} is larger than the training split ({size} images)"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches_per_epoch = size // batch_size
        self._epoch, self._order = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator)
        return self._order[position * self.batch_size : (position + 1) * self.batch_size]


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """The multiple of ``lr`` for 0-based ``step``: linear warm-up, constant, linear cool-down.

    The cool-down takes the rate linearly towards zero over the last ``cooldown_steps`` steps
    (warm-up/stable/decay, Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond
    Fixed Training Durations"); the last step still runs at lr / cooldown_steps.
    """
    warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
    remaining = config.steps - step
    if config.cooldown_steps > 0 and remaining <= config.cooldown_steps:
        return warmup * max(remaining, 0) / config.cooldown_steps
    return warmup


class EMA:
    """An exponential moving average of a network's weights, warmed up as in
    lucidrains/ema-pytorch: early weights are forgotten quickly."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for average, current in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(current, 1.0 - decay)


# --- validation: fixed images, t and noise, so that every evaluation measures the same thing ----


def validation_batch(
    images: torch.Tensor, timesteps: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed validation set with fixed t (evenly spread over [0, T)) and fixed noise."""
    x0 = images[:size]
    t = torch.arange(len(x0)) * timesteps // len(x0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 2))
    return x0, t, noise


@torch.inference_mode()
def validation_errors(
    diffusion: DiffusionProcess, x0, t, noise, batch_size: int = 250
) -> tuple[float, torch.Tensor]:
    """The training objective (MSE to ε, v or x_0, by the model's prediction type) per element, and
    each image's ε-MSE (float64, on the CPU), from the same forward passes."""
    device = diffusion.device
    total = torch.zeros((), device=device, dtype=torch.float64)
    eps_errors = []
    for start in range(0, len(x0), batch_size):
        xb, tb, nb = (v[start : start + batch_size].to(device) for v in (x0, t, noise))
        x_t, _ = diffusion.add_noise(xb, tb, noise=nb)
        output = diffusion.model(x_t, tb)
        total += F.mse_loss(output, diffusion.training_target(xb, nb, tb), reduction="sum").double()
        eps, _ = diffusion.eps_and_x0(x_t, tb, output)
        eps_errors.append((eps - nb).pow(2).flatten(1).mean(1).double().cpu())
    return total.item() / noise.numel(), torch.cat(eps_errors)


def validation_loss(diffusion: DiffusionProcess, x0, t, noise, batch_size: int = 250) -> float:
    """The training objective (MSE to ε, v or x_0, by the model's prediction type) per element."""
    return validation_errors(diffusion, x0, t, noise, batch_size)[0]


# --- the run ------------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    """A run's whole state: the network and its EMA, the optimizer and its schedule, the random
    draws, the step reached, the history and the best validated weights. It saves itself to one
    file and loads itself back, so a killed run resumes where it stopped."""

    diffusion: DiffusionProcess
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    draws: torch.Generator
    run_id: str
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        model_config: dict,
        diffusion_config: dict,
        config: TrainConfig,
        device: torch.device,
        run_id: str,
    ) -> TrainingRun:
        """A fresh run: seeded initial weights, an EMA copy of them, AdamW with the rate schedule."""
        torch.manual_seed(config.seed)
        model = UNet(**model_config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        ema = EMA(model, config.ema_decay)
        return cls(
            diffusion=DiffusionProcess(model, **diffusion_config).to(device),
            ema=ema,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: learning_rate_factor(step, config)
            ),
            draws=torch.Generator(device=device).manual_seed(config.seed + 1),
            run_id=run_id,
            best={"val_loss": math.inf, "step": -1, "state_dict": copy.deepcopy(ema.model.state_dict())},
        )

    @property
    def model(self) -> nn.Module:
        return self.diffusion.model

    def ema_diffusion(self) -> DiffusionProcess:
        """The EMA network with this run's schedule, for validation and the saved model."""
        return self.diffusion.rebuilt(self.ema.model)

    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "run_id": self.run_id,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            # Generator states are CPU byte tensors on every device (CUDA's too).
            "draws": self.draws.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "best": self.best,
        }

    def save(self, path: str | os.PathLike) -> None:
        save_torch(self.state_dict(), path)

    def save_snapshot(self, folder: Path) -> None:
        """The EMA weights as a checkpoint, the online ones beside them, named by the step."""
        save_checkpoint(
            folder / SNAPSHOT_NAME.format(step=self.step),
            self.ema.model,
            self.diffusion.schedule_config(),
            {"step": self.step, "run_id": self.run_id},
            online_state_dict=self.model.state_dict(),
        )

    def prune_snapshots(self, folder: Path) -> None:
        """Remove the snapshots this run would not have made by now: another run's (settings or
        data changed) and those past the step it resumes from, which it makes again."""
        for path in sorted(folder.glob(SNAPSHOT_NAME.replace("{step:07d}", "*"))):
            training = (read_header(path) or {}).get("training", {})
            if training.get("run_id") != self.run_id or training.get("step", math.inf) > self.step:
                log.info("removing snapshot %s: not of this run at step %d", path, self.step)
                path.unlink()

    def resume(self, path: str | os.PathLike) -> bool:
        """Continue from the state saved at ``path`` when it belongs to this run; False when there
        is none or it belongs to another (then this run starts afresh and overwrites it)."""
        path = Path(path)
        if not path.exists():
            return False
        state = read_tagged_file(
            path,
            STATE_FORMAT,
            None,
            "expected the train rule's resume state",
            what="training state",
            remedy="delete it to start the training afresh",
        )
        if state.get("run_id") != self.run_id:
            log.info("ignoring %s: it belongs to another run (settings or data changed)", path)
            return False
        self.model.load_state_dict(state["model"])
        self.ema.model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # Read on the CPU by read_tagged_file, as set_state wants it whatever the generator's device.
        self.draws.set_state(state["draws"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.history, self.best = state["step"], state["history"], state["best"]
        log.info("resuming run %s from step %d (state %s)", self.run_id, self.step, path)
        return True

    def train_step(
        self, x0: torch.Tensor, grad_clip: float, autocast: torch.dtype | None = None
    ) -> torch.Tensor:
        """One optimizer step on the batch ``x0`` at random t and noise, the network's passes
        under ``autocast`` when given; returns the loss (on the device: reading it would sync
        every step)."""
        diffusion, model = self.diffusion, self.model
        t = torch.randint(0, diffusion.timesteps, (len(x0),), device=x0.device, generator=self.draws)
        noise = torch.randn(x0.shape, device=x0.device, generator=self.draws)
        x_t, _ = diffusion.add_noise(x0, t, noise=noise)
        with torch.autocast(x0.device.type, dtype=autocast, enabled=autocast is not None):
            output = model(x_t, t)
        loss = F.mse_loss(output.float(), diffusion.training_target(x0, noise, t))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(model, self.step)
        self.step += 1
        return loss.detach()

    def record(self, losses: list[float]) -> None:
        """History rows for the last ``len(losses)`` steps; the learning rate on the last one."""
        first = self.step - len(losses)
        self.history.extend(
            {"step": first + i + 1, "train_loss": value, "lr": None, "val_loss": None}
            for i, value in enumerate(losses)
        )
        self.history[-1]["lr"] = self.scheduler.get_last_lr()[0]

    def evaluate(self, validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor], buckets: int) -> float:
        """Validate the EMA network, its mean error and its ε-MSE per bucket of t; keep its weights
        when they are the best so far."""
        val, eps_errors = validation_errors(self.ema_diffusion(), *validation)
        t = validation[1]
        per_bucket = bucket_means(eps_errors, t, bucket_edges(self.diffusion.timesteps, buckets))
        self.history[-1].update(
            {"val_loss": val, **{f"val_eps_mse_bucket_{b}": float(e) for b, e in enumerate(per_bucket)}}
        )
        if val < self.best["val_loss"]:
            self.best = {
                "val_loss": val,
                "step": self.step,
                "state_dict": copy.deepcopy(self.ema.model.state_dict()),
            }
        return val


def first_non_finite(losses: list[float], first_step: int) -> str | None:
    """Why training must stop, when one of the losses of steps first_step + 1 … is NaN or Inf."""
    for offset, value in enumerate(losses):
        if not math.isfinite(value):
            return f"training loss became {value} at step {first_step + offset + 1}"
    return None


def train(
    train_images: torch.Tensor,
    validation_images: torch.Tensor,
    model_config: dict,
    diffusion_config: dict,
    config: TrainConfig,
    checkpoint_path: str | os.PathLike,
    state_path: str | os.PathLike,
    history_path: str | os.PathLike,
    device: torch.device | str = "cpu",
    data_sha: str = "",
    progress: bool = True,
    snapshot_dir: str | os.PathLike | None = None,
    buckets: int = 10,
) -> dict:
    """Train, resuming from ``state_path`` when it holds the same run; write the best EMA model.

    The model written to ``checkpoint_path`` is the EMA network with the lowest validation loss
    (on ``validation_images``, never the held-out test digits); ``history_path`` gets one CSV row
    per step, with the validation's ε-MSE in each of ``buckets`` buckets of t where it ran. With
    ``config.snapshot_every`` and a ``snapshot_dir``, the weights every that many steps go there
    as checkpoints (``step-0001000.pt``); snapshots of another run, or past the step a run resumes
    from, are removed from it. Returns a summary dict.
    """
    device = torch.device(device)
    run = TrainingRun.start(
        model_config,
        diffusion_config,
        config,
        device,
        fingerprint(model_config, diffusion_config, config, data_sha),
    )
    run.resume(state_path)
    snapshots = Path(snapshot_dir) if snapshot_dir is not None and config.snapshot_every > 0 else None
    if snapshots is not None:
        snapshots.mkdir(parents=True, exist_ok=True)
        run.prune_snapshots(snapshots)
    if run.step > config.steps:
        log.info("the saved state is at step %d, past train.steps = %d", run.step, config.steps)
    sampler = EpochSampler(len(train_images), config.batch_size, config.seed)
    validation = validation_batch(validation_images, run.diffusion.timesteps, config.val_size, config.seed)
    train_images = train_images.to(device)

    run.model.train()
    pending: list[torch.Tensor] = []
    bar = progress_bar(
        total=config.steps, initial=min(run.step, config.steps), desc="train", disable=not progress
    )
    stop_reason = None
    autocast = autocast_dtype(config.precision)
    while run.step < config.steps:
        batch = train_images[sampler.indices(run.step).to(device)]
        pending.append(run.train_step(batch, config.grad_clip, autocast))
        done = run.step
        evaluate = done % config.val_every == 0 or done == config.steps
        if evaluate or done % config.log_every == 0:
            # One host sync per log_every steps, not per step.
            losses = torch.stack(pending).tolist()
            pending.clear()
            run.record(losses)
            bar.update(len(losses))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            stop_reason = first_non_finite(losses, done - len(losses))
            if stop_reason:
                break
        if evaluate:
            log.info("step %d: validation loss %.5f (EMA)", done, run.evaluate(validation, buckets))
        if snapshots is not None and done % config.snapshot_every == 0:
            run.save_snapshot(snapshots)
        if evaluate or done % config.save_every == 0:
            run.save(state_path)
    bar.close()

    if run.best["step"] < 0:
        if stop_reason:
            raise DiagnosticsError(f"{stop_reason}, before any validated model; lower train.lr")
        run.best = {
            "val_loss": validation_loss(run.ema_diffusion(), *validation),
            "step": run.step,
            "state_dict": run.ema.model.state_dict(),
        }

    summary = {
        "steps": config.steps,
        "best_step": run.best["step"],
        "best_val_loss": run.best["val_loss"],
        "stopped_early": stop_reason,
        "run_id": run.run_id,
        "config": asdict(config),
        "data_sha256": data_sha,
    }
    save_checkpoint(
        checkpoint_path,
        run.ema.model,
        run.diffusion.schedule_config(),
        summary,
        state_dict=run.best["state_dict"],
    )
    write_csv(run.history, history_path, history_columns(buckets))
    if stop_reason:
        # The job still succeeds, so that the workflow keeps the last good model rather than
        # deleting it with the failed job's outputs; the log says loudly what happened.
        log.warning(
            "WARNING: %s; training stopped and kept the best model so far (step %d, validation "
            "loss %.5f) in %s. Lower train.lr or train.grad_clip and retrain.",
            stop_reason,
            run.best["step"],
            run.best["val_loss"],
            checkpoint_path,
        )
    return summary
