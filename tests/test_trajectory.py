"""A model followed through its training (trajectory.py): checkpoints found and ordered by step,
measured with common random numbers, and the buckets of t that regress, stall or collapse found
exactly where a planted trajectory puts them."""

from __future__ import annotations

import math
from pathlib import Path

import diffusers
import pytest
import torch
from diffusers.training_utils import EMAModel

from diffusion_diagnostics import DiffusionProcess
from diffusion_diagnostics.analysis import bucket_edges, bucket_means
from diffusion_diagnostics.checkpoint import load_checkpoint, save_checkpoint
from diffusion_diagnostics.files import read_csv
from diffusion_diagnostics.plots import trajectory_heatmap_figure, trajectory_ratios
from diffusion_diagnostics.training import TrainConfig, train, validation_batch, validation_errors
from diffusion_diagnostics.trajectory import (
    Checkpoint,
    bound_rows,
    find_checkpoints,
    findings,
    follow,
    load_checkpoint_of,
    read_measured,
    save_measured,
    share,
    trajectory_rows,
)

from doubles import StandIn, one_error_line, reference_schedule, tiny_unet, tiny_unet2d

T, BETA_START, BETA_END = 40, 1e-3, 0.2
BUCKETS = 8
STEPS = [100 * (k + 1) for k in range(10)]
PIXEL = 2 * 128 / 255 - 1  # every image is this constant: the network knows x_0, hence ε
REGRESSING, STALLED, COLLAPSED = 3, 5, 6
REGRESSES_AFTER, STALLS_AFTER, COLLAPSES_AT = 6, 5, 8  # checkpoint indices


def planted_offset(k: int, bucket: int) -> float:
    """The error δ of checkpoint k in a bucket: every bucket falls, but REGRESSING rises after
    REGRESSES_AFTER, STALLED holds still after STALLS_AFTER, COLLAPSED turns NaN at COLLAPSES_AT."""
    base = 0.5 * (1 + 0.1 * bucket)
    if bucket == REGRESSING and k > REGRESSES_AFTER:
        return base * 0.8**REGRESSES_AFTER * 1.2 ** (k - REGRESSES_AFTER)
    if bucket == STALLED and k > STALLS_AFTER:
        return base * 0.8**STALLS_AFTER
    if bucket == COLLAPSED and k >= COLLAPSES_AT:
        return math.nan
    return base * 0.8**k


class Planted(StandIn):
    """ε̂ = ε + δ(k, bucket of t) for images of the constant PIXEL: each image's ε-MSE is δ²."""

    def __init__(self, k: int):
        super().__init__()
        alpha_bars = torch.from_numpy(reference_schedule(T, BETA_START, BETA_END)["alpha_bars"])
        self.register_buffer("a", alpha_bars.sqrt())
        self.register_buffer("s", (1 - alpha_bars).sqrt())
        offsets = [planted_offset(k, b) for b in range(BUCKETS)]
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float64))

    def forward(self, x_t, t):
        shape = (-1, *([1] * (x_t.ndim - 1)))
        eps = (x_t.double() - self.a[t].reshape(shape) * PIXEL) / self.s[t].reshape(shape)
        bucket = t * BUCKETS // T
        return (eps + self.offsets[bucket].reshape(shape)).to(x_t.dtype)


def planted_trajectory(steps=STEPS, reference=None, diverged_at=None):
    """The planted checkpoints followed; ``diverged_at``: the index of one whose weights went NaN."""
    points = [Checkpoint(step, Path(f"step-{step}.pt"), "ema") for step in steps]

    def load(point, device):
        network = Planted(STEPS.index(point.step))
        if STEPS.index(point.step) == diverged_at:
            network.offsets.fill_(math.nan)
        return DiffusionProcess(network, T, BETA_START, BETA_END, sample_shape=(1, 2, 2)).to(device)

    images = torch.full((160, 1, 2, 2), PIXEL)
    noises = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    return follow(
        points, images, noises, buckets=BUCKETS, batch_size=80, ddim_steps=2, load=load, reference=reference
    )


def test_a_planted_trajectory_is_found_exactly():
    measured = planted_trajectory()
    for k, one in enumerate(measured):
        expected = [planted_offset(k, b) ** 2 for b in range(BUCKETS)]
        torch.testing.assert_close(
            one.table.mean, torch.tensor(expected, dtype=torch.float64), equal_nan=True
        )
    found = findings(measured)
    assert [(f["bucket"], f["from_step"], f["to_step"]) for f in found["regressing"]] == [
        (REGRESSING, STEPS[REGRESSES_AFTER], STEPS[-1])
    ]
    assert [f["bucket"] for f in found["stalled"]] == [STALLED]
    assert {(f["bucket"], f["from_step"]) for f in found["collapsed"]} == {
        (COLLAPSED, step) for step in STEPS[COLLAPSES_AT:]
    }


def test_a_checkpoint_that_diverged_collapses_everywhere_and_hides_nothing_else():
    """Its every bucket is non-finite, so it is collapsed in each; the other checkpoints are still
    compared (the regression after it, the stall) as if it were not there."""
    diverged = 4
    found = findings(planted_trajectory(diverged_at=diverged))
    assert [(f["bucket"], f["from_step"], f["to_step"]) for f in found["regressing"]] == [
        (REGRESSING, STEPS[REGRESSES_AFTER], STEPS[-1])
    ]
    assert [f["bucket"] for f in found["stalled"]] == [STALLED]
    assert {(f["bucket"], f["from_step"]) for f in found["collapsed"]} == {
        (bucket, STEPS[diverged]) for bucket in range(BUCKETS)
    } | {(COLLAPSED, step) for step in STEPS[COLLAPSES_AT:]}


def test_jobs_that_follow_shares_of_a_trajectory_add_up_to_one_job(tmp_path):
    """trajectory.jobs: each job follows consecutive checkpoints and writes them to a file; read
    back in order they give the one job's tables, findings and samples, bit for bit."""
    whole = planted_trajectory()
    points = [one.point for one in whole]
    assert [len(share(points, part, 3)) for part in range(3)] == [3, 3, 4]
    assert [p for part in range(3) for p in share(points, part, 3)] == points
    assert share(points[:1], 0, 2) == [] and share(points[:1], 1, 2) == points[:1]
    files = []
    for part in range(3):
        steps = [p.step for p in share(points, part, 3)]
        files.append(tmp_path / f"{part}.pt")
        save_measured(planted_trajectory(steps), files[-1])
    together = read_measured(files)
    # As text: a collapsed checkpoint's NaNs are equal there, and repr keeps every bit of a float.
    assert repr(trajectory_rows(together)) == repr(trajectory_rows(whole))
    assert repr(bound_rows(together)) == repr(bound_rows(whole))
    assert repr(findings(together)) == repr(findings(whole))
    for alone, joined in zip(whole, together, strict=True):
        assert joined.point == alone.point
        torch.testing.assert_close(joined.samples, alone.samples, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(joined.eps, alone.eps, rtol=0, atol=0, equal_nan=True)
    one_error_line(lambda: share(points, 3, 3), "part 3", "0 … 2")


def test_a_job_checks_its_share_against_the_trajectorys_first_checkpoint():
    first = DiffusionProcess(Planted(0), T, BETA_START, BETA_END, sample_shape=(1, 2, 2))
    other = DiffusionProcess(Planted(0), T, BETA_START, 2 * BETA_END, sample_shape=(1, 2, 2))
    images, noises = torch.full((8, 1, 2, 2), PIXEL), torch.zeros(1, 1, 2, 2)
    one_error_line(
        lambda: follow(
            [Checkpoint(200, Path("step-200.pt"), "ema")],
            images,
            noises,
            buckets=2,
            ddim_steps=1,
            load=lambda point, device: other,
            reference=(Checkpoint(100, Path("step-100.pt"), "ema"), first),
        ),  # fmt: skip
        "step-200.pt",
        "another process",
        "step-100.pt",
    )


def test_the_heatmap_draws_each_bucket_relative_to_the_last_checkpoint():
    rows = [{k: str(v) for k, v in row.items()} for row in trajectory_rows(planted_trajectory())]
    steps, buckets, ratios = trajectory_ratios(rows)
    assert steps == STEPS and [int(b["bucket"]) for b in buckets] == list(range(BUCKETS))
    for bucket in range(BUCKETS):
        last = planted_offset(len(STEPS) - 1, bucket) ** 2
        for k in range(len(STEPS)):
            if bucket == COLLAPSED:  # its last value is NaN: nothing is relative to it
                assert math.isnan(ratios[bucket][k])
            else:
                expected = math.log10(planted_offset(k, bucket) ** 2 / last)
                assert ratios[bucket][k] == pytest.approx(expected, abs=1e-6), (bucket, k)
    [image] = trajectory_heatmap_figure(rows).axes[0].images
    drawn = image.get_array()
    assert drawn.shape == (BUCKETS, len(STEPS))
    assert drawn.mask[COLLAPSED].all()  # non-finite, drawn in the "bad" colour
    assert drawn[REGRESSING, -1] == 0 and drawn[REGRESSING, REGRESSES_AFTER] < 0  # blue before the end
    # The colours reach what 90 % of the cells stay within: the first checkpoints saturate instead
    # of washing out the rest.
    finite = sorted(abs(value) for line in ratios for value in line if math.isfinite(value))
    assert image.norm.vmax == pytest.approx(finite[int(0.9 * (len(finite) - 1))])
    assert image.norm.vmax < finite[-1]
    assert image.norm.vmin == -image.norm.vmax


# --- finding and ordering checkpoints --------------------------------------------------------------

PROCESS = {"timesteps": T, "beta_start": BETA_START, "beta_end": BETA_END}


def test_checkpoints_are_ordered_by_the_step_their_metadata_or_name_holds(tmp_path):
    save_checkpoint(tmp_path / "b.pt", tiny_unet(), PROCESS, {"step": 20})
    save_checkpoint(tmp_path / "a.pt", tiny_unet(), PROCESS, {"best_step": 30})  # a final best model
    save_checkpoint(tmp_path / "model-5.pt", tiny_unet(), PROCESS)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    points = find_checkpoints(tmp_path)
    assert [(p.step, p.path.name, p.weights) for p in points] == [
        (5, "model-5.pt", "ema"),
        (20, "b.pt", "ema"),
        (30, "a.pt", "ema"),
    ]
    assert [p.step for p in find_checkpoints(str(tmp_path / "*.pt"))] == [5, 20, 30]


def test_a_snapshot_holds_both_weights_side_by_side(tmp_path):
    online = tiny_unet(seed=1)
    save_checkpoint(
        tmp_path / "step-1.pt", tiny_unet(), PROCESS, {"step": 1}, online_state_dict=online.state_dict()
    )
    ema_point, online_point = find_checkpoints(tmp_path, weights="both")
    assert (ema_point.weights, online_point.weights) == ("ema", "online")
    loaded = load_checkpoint_of(online_point).model
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), online.state_dict().values(), strict=True)
    )
    save_checkpoint(tmp_path / "step-2.pt", tiny_unet(), PROCESS, {"step": 2})
    one_error_line(
        lambda: find_checkpoints(tmp_path, weights="online"), "step-2.pt", "holds no online weights"
    )


def diffusers_training_run(root, steps=(10, 20), scheduler=True):
    """A run as diffusers' train_unconditional.py leaves it: checkpoint-<step>/ with unet/ and the
    EMA's unet_ema/ (EMAModel.save_pretrained), and the pipeline of the last epoch (with its
    scheduler) in the run's folder, which makes the folder a DDPMPipeline folder too. A run stopped
    inside its first epoch has no pipeline yet (``scheduler=False``)."""
    unet = tiny_unet2d(seed=0)
    for index, step in enumerate(steps):
        unet = tiny_unet2d(seed=index)
        unet.save_pretrained(root / f"checkpoint-{step}" / "unet")
        ema = EMAModel(unet.parameters(), model_cls=diffusers.UNet2DModel, model_config=unet.config)
        with torch.no_grad():
            for parameter in ema.shadow_params:
                parameter.mul_(0.5)  # the EMA unlike the network, so that the two can be told apart
        ema.save_pretrained(root / f"checkpoint-{step}" / "unet_ema")
    if scheduler:
        noise_scheduler = diffusers.DDPMScheduler(
            num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END
        )
        diffusers.DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(root)
    return root


def test_a_diffusers_training_run_is_read_as_its_script_leaves_it(tmp_path):
    run = diffusers_training_run(tmp_path / "ddpm-mnist")
    points = find_checkpoints(run, weights="both")
    assert [(p.step, p.weights, p.path.name) for p in points] == [
        (10, "ema", "unet_ema"),
        (10, "online", "unet"),
        (20, "ema", "unet_ema"),
        (20, "online", "unet"),
    ]
    assert {p.scheduler for p in points} == {run / "scheduler" / "scheduler_config.json"}
    images = torch.zeros(8, 1, 8, 8)
    noises = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    measured = follow(points, images, noises, buckets=4, batch_size=8, ddim_steps=2)
    assert measured[0].table.bound.timesteps == T
    assert not torch.equal(measured[0].table.mean, measured[1].table.mean)  # EMA and online differ
    assert {tuple(one.samples.shape) for one in measured} == {(2, 1, 8, 8)}


def test_a_scheduler_given_elsewhere_is_taken(tmp_path):
    run = diffusers_training_run(tmp_path / "run", steps=(5,), scheduler=False)
    one_error_line(
        lambda: find_checkpoints(run), "checkpoint-5", "no scheduler config", "trajectory.scheduler"
    )
    elsewhere = diffusers_training_run(tmp_path / "other", steps=(), scheduler=True)
    [point] = find_checkpoints(run, scheduler=elsewhere)
    assert point.scheduler == elsewhere / "scheduler" / "scheduler_config.json"
    # A pipeline folder alone is one model, not a run.
    one_error_line(lambda: find_checkpoints(elsewhere), "one diffusers model", "checkpoint:")


def test_bad_trajectories_are_one_error_line(tmp_path):
    one_error_line(lambda: find_checkpoints(str(tmp_path / "run-*.pt")), "matches no checkpoint")
    one_error_line(lambda: find_checkpoints(tmp_path / "missing"), "neither a glob nor a folder")
    save_checkpoint(tmp_path / "model-7.pt", tiny_unet(), PROCESS)
    save_checkpoint(tmp_path / "other-7.pt", tiny_unet(), PROCESS)
    one_error_line(lambda: find_checkpoints(tmp_path), "model-7.pt", "other-7.pt", "both hold step 7")
    (tmp_path / "other-7.pt").unlink()
    save_checkpoint(tmp_path / "model-9.pt", tiny_unet(), {**PROCESS, "beta_end": 0.1})
    points = find_checkpoints(tmp_path)
    images, noises = torch.zeros(4, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    one_error_line(lambda: follow(points, images, noises, buckets=2), "model-9.pt", "another process")
    (tmp_path / "model-9.pt").unlink()
    save_checkpoint(tmp_path / "model-9.pt", tiny_unet(), PROCESS)
    # The same network, trained at another image size: models make samples of the size they were given.
    big = DiffusionProcess(tiny_unet(), **PROCESS, sample_shape=(1, 32, 32))
    one_error_line(
        lambda: follow(
            points,
            images,
            noises,
            buckets=2,
            load=lambda p, d: big if p.step == 9 else load_checkpoint_of(p, d),
        ),
        "model-9.pt",
        "images of shape [1, 32, 32]",
    )


# --- the train rule's snapshots and its validation per bucket -------------------------------------


def test_training_snapshots_are_a_trajectory_and_its_validation_agrees_with_it(tmp_path):
    """Snapshots every 2 steps; the history's per-bucket validation ε-MSE at those steps is what the
    snapshot's weights give on the validation's own images, t and noise."""
    images = torch.rand((40, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = TrainConfig(
        steps=6,
        batch_size=8,
        warmup_steps=2,
        val_every=2,
        val_size=16,
        save_every=2,
        log_every=2,
        snapshot_every=2,
    )
    model = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "dropout": 0.0}
    arguments = (images, images[:16], model, PROCESS, config, tmp_path / "best.pt", tmp_path / "state.pt")
    train(
        *arguments, tmp_path / "history.csv", progress=False, snapshot_dir=tmp_path / "snapshots", buckets=4
    )
    points = find_checkpoints(tmp_path / "snapshots", weights="both")
    assert [(p.step, p.weights) for p in points] == [(s, w) for s in (2, 4, 6) for w in ("ema", "online")]
    history = {int(row["step"]): row for row in read_csv(tmp_path / "history.csv")}
    validation = validation_batch(images[:16], T, config.val_size, config.seed)
    for point in points[::2]:
        diffusion, training = load_checkpoint(point.path)
        assert training["step"] == point.step
        _, eps = validation_errors(diffusion, *validation)
        per_bucket = bucket_means(eps, validation[1], bucket_edges(T, 4))
        recorded = [float(history[point.step][f"val_eps_mse_bucket_{b}"]) for b in range(4)]
        assert recorded == pytest.approx(per_bucket.tolist(), rel=1e-6), point.step
    assert history[1]["val_eps_mse_bucket_0"] == ""  # no validation at step 1

    # A run with other settings starts afresh: the old run's snapshots go.
    other = TrainConfig(**{**vars(config), "seed": 1, "steps": 2})
    train(*arguments[:4], other, *arguments[5:], tmp_path / "history.csv", progress=False,
          snapshot_dir=tmp_path / "snapshots", buckets=4)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["step-0000002.pt"]
