"""Training: resumes from its saved state to the same weights, keeps the best EMA model."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffusion_diagnostics.checkpoint import load_checkpoint
from diffusion_diagnostics.training import (
    EpochSampler,
    TrainConfig,
    TrainingRun,
    learning_rate_factor,
    train,
)

MODEL = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "dropout": 0.0}
SCHEDULE = {"timesteps": 20, "beta_start": 1e-3, "beta_end": 0.2, "clip_sample": True}


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand((count, 1, 28, 28), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def run(tmp_path, name: str, steps: int, state_name: str = "state.pt", **settings):
    config = TrainConfig(
        **{
            "steps": steps,
            "batch_size": 8,
            "warmup_steps": 2,
            "val_every": 4,
            "val_size": 16,
            "save_every": 2,
            "log_every": 2,
            **settings,
        }
    )
    summary = train(
        images(40, 0),
        images(16, 1),
        MODEL,
        SCHEDULE,
        config,
        checkpoint_path=tmp_path / f"{name}.pt",
        state_path=tmp_path / state_name,
        history_path=tmp_path / f"{name}.csv",
        progress=False,
    )
    return summary, load_checkpoint(tmp_path / f"{name}.pt")[0]


def train_in_subprocess(tmp_path, name, steps, state):
    """``run`` in a process of its own, which a test can kill with SIGKILL (see the end of this file)."""
    return subprocess.Popen([sys.executable, __file__, str(tmp_path), name, str(steps), state])


def test_run_killed_with_sigkill_resumes_to_identical_weights(tmp_path):
    steps = 40  # 8 epochs of the 40 images, 10 validations, a state saved every 2 steps
    # The uninterrupted run and the one to be killed side by side: they share nothing but the settings.
    straight = train_in_subprocess(tmp_path, "straight", steps, "straight_state.pt")
    victim = train_in_subprocess(tmp_path, "resumed", steps, "resumed_state.pt")
    state = tmp_path / "resumed_state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = torch.load(state, weights_only=True)["step"]
    assert 0 < killed_at < steps
    assert not (tmp_path / "resumed.pt").exists()
    assert straight.wait(timeout=300) == 0

    resumed = train_in_subprocess(tmp_path, "resumed", steps, "resumed_state.pt")
    assert resumed.wait(timeout=300) == 0
    assert (tmp_path / "straight.pt").read_bytes() == (tmp_path / "resumed.pt").read_bytes()
    assert (tmp_path / "straight.csv").read_text() == (tmp_path / "resumed.csv").read_text()


def test_a_longer_budget_continues_the_same_run(tmp_path):
    run(tmp_path, "short", steps=6)
    summary, _ = run(tmp_path, "long", steps=10)
    with open(tmp_path / "long.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    with open(tmp_path / "short.csv") as handle:
        assert rows[:6] == list(csv.DictReader(handle))  # the first six steps were not redone
    assert summary["steps"] == 10


def test_learning_rate_warms_up_holds_and_cools_down_linearly():
    config = TrainConfig(steps=10, warmup_steps=2, cooldown_steps=4)
    factors = [learning_rate_factor(step, config) for step in range(10)]
    assert factors == [0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    constant = TrainConfig(steps=10, warmup_steps=2)
    assert [learning_rate_factor(step, constant) for step in range(10)] == [0.5] + [1.0] * 9


def test_a_constant_run_resumes_with_a_cooldown_added(tmp_path):
    run(tmp_path, "stable", steps=6)
    run(tmp_path, "cooled", steps=10, cooldown_steps=4)
    with open(tmp_path / "cooled.csv") as handle:
        rows = list(csv.DictReader(handle))
    with open(tmp_path / "stable.csv") as handle:
        assert rows[:6] == list(csv.DictReader(handle))  # resumed, not retrained
    # The logged rate is the one the next step will use: lr x (steps - done) / cooldown_steps.
    logged = {int(r["step"]): float(r["lr"]) for r in rows if r["lr"]}
    assert logged[8] == pytest.approx(1e-3 * 2 / 4)
    assert logged[10] == 0.0


def test_history_has_a_row_per_step_and_validation_rows(tmp_path):
    summary, _ = run(tmp_path, "model", steps=8)
    with open(tmp_path / "model.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    validated = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    assert set(validated) == {4, 8}
    assert summary["best_val_loss"] == min(validated.values())
    assert summary["best_step"] == min(validated, key=validated.get)


def test_a_state_from_other_settings_is_not_resumed(tmp_path):
    run(tmp_path, "first", steps=4)
    other = TrainConfig(steps=4, batch_size=8, lr=5e-4, val_every=4, val_size=16, save_every=2, log_every=2)
    train(
        images(40, 0),
        images(16, 1),
        MODEL,
        SCHEDULE,
        other,
        tmp_path / "other.pt",
        tmp_path / "state.pt",
        tmp_path / "other.csv",
        progress=False,
    )
    with open(tmp_path / "other.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4  # trained from step 0, not resumed at 4


class CudaGeneratorStandIn:
    """What a CUDA generator accepts on resume: its device says cuda, yet ``set_state`` takes only
    a CPU byte tensor (as torch.cuda's does). On this CPU-only machine, code that moves the saved
    state to the generator's device, or reads the file onto it, fails here as it would on a GPU."""

    device = torch.device("cuda")

    def __init__(self):
        self.states: list[torch.Tensor] = []

    def set_state(self, state: torch.Tensor) -> None:
        assert state.device.type == "cpu" and state.dtype == torch.uint8, (state.device, state.dtype)
        self.states.append(state)


def test_resume_gives_a_generator_its_state_as_a_cpu_byte_tensor_whatever_its_device(tmp_path):
    config = TrainConfig(steps=4, batch_size=8)
    saved = TrainingRun.start(MODEL, SCHEDULE, config, torch.device("cpu"), run_id="run")
    saved.train_step(images(8, 0), config.grad_clip)
    saved.save(tmp_path / "state.pt")

    resumed = TrainingRun.start(MODEL, SCHEDULE, config, torch.device("cpu"), run_id="run")
    resumed.draws = CudaGeneratorStandIn()
    assert resumed.resume(tmp_path / "state.pt")
    [state] = resumed.draws.states
    assert torch.equal(state, saved.draws.get_state())
    assert resumed.step == 1


def test_epoch_sampler_visits_every_image_once_per_epoch():
    sampler = EpochSampler(size=12, batch_size=4, seed=3)
    epoch = torch.cat([sampler.indices(step) for step in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))
    again = EpochSampler(size=12, batch_size=4, seed=3)
    assert torch.equal(again.indices(4), sampler.indices(4))  # any step is recomputable


# train_in_subprocess runs this file as a script: one training run, in a process a test can kill.
if __name__ == "__main__":
    torch.set_num_threads(1)
    directory, name, steps, state_name = sys.argv[1:]
    run(Path(directory), name, steps=int(steps), state_name=state_name)
