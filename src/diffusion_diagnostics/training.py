"""The training loop behind the ``train`` rule: AdamW, EMA weights, validation, resume.

Every random draw (initial weights, data order, t, noise) comes from seeded generators whose
states are saved with the model, so a run that is killed and resumed ends with the same weights,
bit for bit on a CPU, as one that ran straight through.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import save_checkpoint
from .diffusion import DiffusionProcess
from .errors import DiagnosticsError
from .files import atomic_output, save_torch
from .runtime import progress_bar
from .unet import UNet

log = logging.getLogger(__name__)

STATE_FORMAT = "diffusion-diagnostics-train-state"


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
    seed: int = 0


def fingerprint(model_config: dict, diffusion_config: dict, config: TrainConfig, data_sha: str) -> str:
    """Identifies a run up to its length, so that a longer ``steps`` resumes a shorter run.

    The cool-down belongs to the length: it is where the budget ends, so a run trained at a
    constant rate can be resumed with a cool-down added (as warm-up/stable/decay schedules do).
    """
    settings = asdict(config)
    for free in ("steps", "cooldown_steps", "val_every", "save_every", "log_every"):
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


def validation_batch(
    images: torch.Tensor, timesteps: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed held-out set with fixed t (evenly spread over [0, T)) and fixed noise."""
    x0 = images[:size]
    t = torch.arange(len(x0)) * timesteps // len(x0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 2))
    return x0, t, noise


@torch.inference_mode()
def validation_loss(diffusion: DiffusionProcess, x0, t, noise, batch_size: int = 250) -> float:
    device = diffusion.device
    total = torch.zeros((), device=device, dtype=torch.float64)
    for start in range(0, len(x0), batch_size):
        xb, tb, nb = (v[start : start + batch_size].to(device) for v in (x0, t, noise))
        x_t, _ = diffusion.add_noise(xb, tb, noise=nb)
        total += F.mse_loss(diffusion.model(x_t, tb), nb, reduction="sum").double()
    return total.item() / noise.numel()


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


def train(
    train_images: torch.Tensor,
    heldout_images: torch.Tensor,
    model_config: dict,
    diffusion_config: dict,
    config: TrainConfig,
    checkpoint_path: str | os.PathLike,
    state_path: str | os.PathLike,
    history_path: str | os.PathLike,
    device: torch.device | str = "cpu",
    data_sha: str = "",
    progress: bool = True,
) -> dict:
    """Train, resuming from ``state_path`` when it holds the same run; write the best EMA model.

    The model written to ``checkpoint_path`` is the EMA network with the lowest validation
    ε-MSE; ``history_path`` gets one CSV row per step. Returns a summary dict.
    """
    state_path, device = Path(state_path), torch.device(device)
    run_id = fingerprint(model_config, diffusion_config, config, data_sha)

    torch.manual_seed(config.seed)
    model = UNet(**model_config).to(device)
    ema_model = copy.deepcopy(model).requires_grad_(False).eval()
    diffusion = DiffusionProcess(model, **diffusion_config).to(device)
    ema_diffusion = DiffusionProcess(ema_model, **diffusion_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    draws = torch.Generator(device=device).manual_seed(config.seed + 1)
    sampler = EpochSampler(len(train_images), config.batch_size, config.seed)
    val_x0, val_t, val_noise = validation_batch(
        heldout_images, diffusion.timesteps, config.val_size, config.seed
    )

    start_step, history = 0, []
    best = {"val_loss": math.inf, "step": -1, "state_dict": copy.deepcopy(ema_model.state_dict())}
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state.get("format") == STATE_FORMAT and state.get("run_id") == run_id:
            model.load_state_dict(state["model"])
            ema_model.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            draws.set_state(state["draws"].cpu() if device.type == "cpu" else state["draws"])
            torch.set_rng_state(state["torch_rng"].cpu())
            start_step, history, best = state["step"], state["history"], state["best"]
            log.info("resuming run %s from step %d (state %s)", run_id, start_step, state_path)
        else:
            log.info("ignoring %s: it belongs to another run (settings or data changed)", state_path)
    if start_step > config.steps:
        log.info("the saved state is at step %d, past train.steps = %d", start_step, config.steps)

    def save_state(step: int) -> None:
        state = {
            "format": STATE_FORMAT,
            "run_id": run_id,
            "step": step,
            "model": model.state_dict(),
            "ema": ema_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "draws": draws.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
            "best": best,
        }
        save_torch(state, state_path)

    train_images = train_images.to(device)
    model.train()
    pending: list[torch.Tensor] = []
    bar = progress_bar(
        total=config.steps, initial=min(start_step, config.steps), desc="train", disable=not progress
    )
    stop_reason = None
    for step in range(start_step, config.steps):
        x0 = train_images[sampler.indices(step).to(device)]
        t = torch.randint(0, diffusion.timesteps, (len(x0),), device=device, generator=draws)
        noise = torch.randn(x0.shape, device=device, generator=draws)
        x_t, _ = diffusion.add_noise(x0, t, noise=noise)
        loss = F.mse_loss(model(x_t, t), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        # Warm-up of the EMA (as in lucidrains/ema-pytorch): early weights are forgotten quickly.
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema_param, param in zip(ema_model.parameters(), model.parameters(), strict=True):
                ema_param.lerp_(param, 1.0 - decay)
        pending.append(loss.detach())

        done = step + 1
        evaluate = done % config.val_every == 0 or done == config.steps
        if evaluate or done % config.log_every == 0:
            # One host sync per log_every steps, not per step.
            losses = torch.stack(pending).tolist()
            first = done - len(losses)
            history.extend(
                {"step": first + i + 1, "train_loss": value, "lr": None, "val_loss": None}
                for i, value in enumerate(losses)
            )
            history[-1]["lr"] = scheduler.get_last_lr()[0]
            pending.clear()
            bar.update(len(losses))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if not all(math.isfinite(v) for v in losses):
                bad = first + next(i for i, v in enumerate(losses) if not math.isfinite(v)) + 1
                stop_reason = f"training loss became {losses[bad - first - 1]} at step {bad}"
                break
        if evaluate:
            val = validation_loss(ema_diffusion, val_x0, val_t, val_noise)
            history[-1]["val_loss"] = val
            log.info("step %d: validation ε-MSE %.5f (EMA)", done, val)
            if val < best["val_loss"]:
                best = {"val_loss": val, "step": done, "state_dict": copy.deepcopy(ema_model.state_dict())}
        if evaluate or done % config.save_every == 0:
            save_state(done)
    bar.close()

    if best["step"] < 0:
        if stop_reason:
            raise DiagnosticsError(f"{stop_reason}, before any validated model; lower train.lr")
        val = validation_loss(ema_diffusion, val_x0, val_t, val_noise)
        best = {"val_loss": val, "step": start_step, "state_dict": ema_model.state_dict()}

    summary = {
        "steps": config.steps,
        "best_step": best["step"],
        "best_val_loss": best["val_loss"],
        "stopped_early": stop_reason,
        "run_id": run_id,
        "config": asdict(config),
        "data_sha256": data_sha,
    }
    save_checkpoint(checkpoint_path, ema_model, diffusion_config, summary, state_dict=best["state_dict"])
    write_history(history, history_path)
    if stop_reason:
        # The job still succeeds, so that the workflow keeps the last good model rather than
        # deleting it with the failed job's outputs; the log says loudly what happened.
        log.warning(
            "WARNING: %s; training stopped and kept the best model so far (step %d, validation "
            "ε-MSE %.5f) in %s. Lower train.lr or train.grad_clip and retrain.",
            stop_reason,
            best["step"],
            best["val_loss"],
            checkpoint_path,
        )
    return summary


def write_history(history: list[dict], path: str | os.PathLike) -> None:
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "train_loss", "lr", "val_loss"])
            writer.writeheader()
            writer.writerows(history)


def read_history(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
