"""TimestepLossMonitor inside a user's own diffusers training loop: the same images, t and noise at
every call, the model left as it was found, and each bucket's error as a TensorBoard scalar, read
back from the event file."""

from __future__ import annotations

import diffusers
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from diffusion_diagnostics.monitor import TimestepLossMonitor, scalar_name

from doubles import tiny_unet2d


def test_a_diffusers_training_loop_logs_each_bucket_to_tensorboard(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = torch.rand((64, 1, 8, 8), generator=generator) * 2 - 1
    held_out = torch.rand((32, 1, 8, 8), generator=generator) * 2 - 1

    # The loop as a user writes it, with the monitor's three lines added.
    unet, scheduler = tiny_unet2d(), diffusers.DDPMScheduler(num_train_timesteps=40)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    monitor = TimestepLossMonitor.for_diffusers(unet, scheduler, held_out, buckets=4)
    writer = SummaryWriter(tmp_path)
    tables = {}
    for step, batch in enumerate(data.split(16), start=1):
        noise = torch.randn(batch.shape, generator=generator)
        t = torch.randint(0, 40, (len(batch),), generator=generator)
        loss = F.mse_loss(unet(scheduler.add_noise(batch, noise, t), t).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 2 == 0:
            tables[step] = monitor.log(writer, step)
    writer.close()

    assert unet.training  # put back as it was
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    rows = tables[2].rows()
    assert [scalar_name(row) for row in rows] == [
        f"timestep_loss/eps_mse/t{10 * b:04d}-{10 * b + 9:04d}" for b in range(4)
    ]
    for row_index in range(4):
        logged = events.Scalars(scalar_name(rows[row_index]))
        assert [event.step for event in logged] == [2, 4]
        expected = [tables[step].rows()[row_index]["mse"] for step in (2, 4)]
        assert [event.value for event in logged] == pytest.approx(expected, rel=1e-6)
    assert [event.step for event in events.Scalars("timestep_loss/bound_bpd")] == [2, 4]
    assert tables[2].mean.tolist() != tables[4].mean.tolist()  # the model trained in between


def test_every_call_draws_the_same_t_and_noise():
    unet, scheduler = tiny_unet2d(), diffusers.DDPMScheduler(num_train_timesteps=40)
    images = torch.rand((24, 1, 8, 8), generator=torch.Generator().manual_seed(1)) * 2 - 1
    monitor = TimestepLossMonitor.for_diffusers(unet, scheduler, images, buckets=4, batch_size=8)
    first, again = monitor(), monitor()
    assert torch.equal(first.mean, again.mean) and first.bound.total_bpd == again.bound.total_bpd
    unet.eval()
    monitor()
    assert not unet.training
