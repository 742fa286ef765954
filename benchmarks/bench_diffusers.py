"""diffusers on the same network: its own pipelines against our samplers, from the same noise.

A ``UNet2DModel`` laid out like our UNet (the same FLOPs) is saved with a ``DDPMScheduler`` as a
DDPMPipeline folder and read back by ``load_model``, as the workflow reads a user's folder. On that
one network object: diffusers' ``DDPMPipeline`` and ``DDIMPipeline`` calls, our DDPM and DDIM
samplers, and the network's forwards alone.

The pipelines take no starting noise: they draw x_T with ``randn_tensor`` from the generator they
are given. Our runs make the same call with an equally seeded generator, so both start from the same
x_T (checked: a hook records the input of the pipeline's first network call). DDPM then draws one
noise per step but the last from that generator, in the same order and shape on both sides, so even
its per-step noise lines up; DDIM at η = 0 draws none.

The two sides call the same network the same number of times on the same inputs, so a whole run
differs only by each sampler's own arithmetic per step, which is well under 1 % of a forward of
this network and so below what whole runs minutes apart can resolve. The own-cost rows measure it
on its own: the same runs around a stand-in ``UNet2DModel`` whose forward returns a fixed tensor.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_cases import forward_floor, paired_overhead, pixel_difference
from bench_sizes import Sizes
from bench_timing import Case, Timings, flops_of, paired_seconds
from torch import nn

from diffusion_diagnostics import DiffusionProcess, SamplingOptions
from diffusion_diagnostics.diffusion import trailing_timesteps
from diffusion_diagnostics.models import DiffusersUNet, load_model

NOISE_SEED = 3  # any seed: both sides draw x_T (and DDPM's step noise) from a generator seeded with it
SAMPLERS = ("ddpm", "ddim")
PIPELINE_NAMES = {"ddpm": "DDPMPipeline", "ddim": "DDIMPipeline"}


def row_label(name: str, sampler: str, steps: int) -> str:
    """A row's name, with DDIM's number of steps (DDPM always takes all T)."""
    return name if sampler == "ddpm" else f"{name}, S = {steps}"


def unet_like_ours(diffusers, sizes: Sizes) -> nn.Module:
    """Our UNet's layout in diffusers' blocks: one resolution per block, no attention; random weights."""
    blocks = sizes.diffusers_blocks
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return diffusers.UNet2DModel(
            sample_size=28,
            in_channels=1,
            out_channels=1,
            block_out_channels=blocks,
            layers_per_block=sizes.model["num_res_blocks"],
            down_block_types=("DownBlock2D",) * len(blocks),
            up_block_types=("UpBlock2D",) * len(blocks),
            norm_num_groups=8,
            add_attention=False,
        )


def describe_unet(sizes: Sizes) -> str:
    return (
        f"UNet2DModel(block_out_channels={list(sizes.diffusers_blocks)}, layers_per_block="
        f"{sizes.model['num_res_blocks']}, DownBlock2D/UpBlock2D, norm_num_groups=8, no attention)"
    )


def ddpm_scheduler(diffusers, sizes: Sizes):
    """Our schedule in diffusers' keys (DDPM's σ_t² = β̃_t, x̂_0 clipped: both defaults on both sides)."""
    return diffusers.DDPMScheduler(
        num_train_timesteps=sizes.timesteps,
        beta_schedule="linear",
        beta_start=sizes.diffusion["beta_start"],
        beta_end=sizes.diffusion["beta_end"],
        clip_sample=True,
    )


def folder_model(diffusers, sizes: Sizes, device: torch.device) -> tuple[DiffusionProcess, dict]:
    """The UNet saved as a DDPMPipeline folder and read back by load_model, with what it said."""
    with tempfile.TemporaryDirectory(prefix="benchmark-diffusers-") as folder:
        pipeline = diffusers.DDPMPipeline(
            unet=unet_like_ours(diffusers, sizes), scheduler=ddpm_scheduler(diffusers, sizes)
        )
        pipeline.save_pretrained(folder)
        # load_model reads the weights into memory, so the folder may go once it returns.
        return load_model(Path(folder), device)


def fixed_output_unet(diffusers, shape: tuple[int, ...], device: torch.device) -> nn.Module:
    """A ``UNet2DModel`` (the pipelines read its config, dtype and device) whose forward costs
    nothing: it returns one fixed ε̂ of the grid's shape, so a sampler around it costs only its own
    arithmetic and its noise draws."""
    from diffusers.models.unets.unet_2d import UNet2DOutput

    class FixedOutputUNet(diffusers.UNet2DModel):
        def forward(self, sample, timestep, **kwargs):
            return UNet2DOutput(sample=self.fixed_output)

    unet = FixedOutputUNet(
        sample_size=shape[-1],
        in_channels=shape[1],
        out_channels=shape[1],
        block_out_channels=(8,),
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        norm_num_groups=8,
        add_attention=False,
    ).to(device)
    fixed = 0.5 * torch.randn(shape, generator=torch.Generator().manual_seed(1))
    unet.register_buffer("fixed_output", fixed.to(device))
    return unet


def pipelines(diffusers, unet: nn.Module, sizes: Sizes, device: torch.device) -> dict:
    """diffusers' own pipelines around ``unet``; DDIM with trailing timesteps, as ours by default."""
    ddpm = diffusers.DDPMPipeline(unet=unet, scheduler=ddpm_scheduler(diffusers, sizes))
    ddim_scheduler = diffusers.DDIMScheduler.from_config(ddpm.scheduler.config, timestep_spacing="trailing")
    ddim = diffusers.DDIMPipeline(unet=unet, scheduler=ddim_scheduler)
    for pipeline in (ddpm, ddim):
        pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
    return {"ddpm": ddpm, "ddim": ddim}


class FirstInput:
    """Records the input of a module's first call and unhooks itself: the x_T a pipeline denoises."""

    def __init__(self, module: nn.Module):
        self.value = None
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.value = args[0].clone()
        self.handle.remove()


def pipeline_run(pipeline, sizes: Sizes, steps: int, device: torch.device) -> Callable:
    """One pipeline call for the grid's number of images; returns its images in [-1, 1] and its x_T."""

    def run():
        first = FirstInput(pipeline.unet)
        images = pipeline(
            batch_size=sizes.images,
            generator=torch.Generator(device).manual_seed(NOISE_SEED),
            num_inference_steps=steps,
            output_type="pt",
        ).images
        return images * 2 - 1, first.value  # the pipeline hands back (x + 1) / 2, clamped to [0, 1]

    return run


def ours_run(
    randn_tensor, diffusion: DiffusionProcess, sampler: str, steps: int, sizes: Sizes, device: torch.device
) -> Callable:
    """Our sampler from the pipeline's noise: x_T by the pipeline's own call, and for DDPM the step
    noise from the same generator after it; returns the images, clamped as the pipeline's, and x_T.
    DDIM clips x̂_0 as the pipeline's scheduler does (clip_sample), which ours does only when asked."""
    shape = (sizes.images, *diffusion.sample_shape)
    as_the_pipeline = SamplingOptions(clip_x0=diffusion.clip_sample)

    def run():
        generator = torch.Generator(device).manual_seed(NOISE_SEED)
        x_T = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if sampler == "ddpm":
            images = diffusion.sample(x_T, generator=generator)
        else:
            images = diffusion.sample_ddim(x_T, steps, options=as_the_pipeline)
        return images.clamp(-1, 1), x_T

    return run


@dataclass
class DiffusersRows:
    """The diffusers folder model's cases, and the network they share."""

    version: str
    description: str
    flops_per_forward: int
    diffusion: DiffusionProcess  # as load_model read it from the folder
    noise: torch.Tensor  # a grid's worth of x_T for the forwards alone
    forwards: dict[str, int]  # by sampler
    ours: dict[str, Case]
    pipelines: dict[str, Case]
    floor: Case  # the DDIM runs' forwards of the UNet alone
    own_cost_runs: dict[str, dict[str, Callable]]  # by sampler: ours and the pipeline, free network

    @property
    def unet(self) -> nn.Module:
        return self.diffusion.model.unet

    def cases(self) -> list[Case]:
        return [*self.ours.values(), *self.pipelines.values(), self.floor]

    def paired(self, sizes: Sizes) -> dict:
        """Our samplers over the UNet's own forwards (``unet(x, t).sample``), in paired short runs."""
        return paired_overhead(self.diffusion.model, self.noise, sizes, lambda x, t: self.unet(x, t).sample)

    def own_cost(self, sizes: Sizes, device: torch.device) -> dict:
        """Each side's own cost per step around the free network, in ``sizes.pairs`` back-to-back
        pairs with the order alternating (whole runs of the grid's steps, as in the rows above)."""
        rows = {}
        for sampler, runs in self.own_cost_runs.items():
            seconds = paired_seconds(runs, sizes.pairs, device)
            steps = self.forwards[sampler]
            rows[sampler] = {
                "label": row_label(f"our {sampler.upper()} vs {PIPELINE_NAMES[sampler]}", sampler, steps),
                "steps": steps,
                "pairs": sizes.pairs,
                **{f"{side}_us_per_step": 1e6 * statistics.median(seconds[side]) / steps for side in runs},
                "pipeline_over_ours": statistics.median(
                    pipeline / ours
                    for pipeline, ours in zip(seconds["pipeline"], seconds["ours"], strict=True)
                ),
            }
        return rows

    def versus_floor(self, sampler: str, seconds: float, timings: Timings) -> dict:
        """The DDIM runs against the UNet's forwards alone; DDPM's T forwards have no floor case,
        which would cost as much as the DDPM runs again (the paired runs read that ratio)."""
        if sampler == "ddpm":
            return {}
        floor = timings.median(self.floor)
        return {"floor_seconds": floor, "ratio_to_floor": seconds / floor}

    def pipeline_row(self, sampler: str, timings: Timings) -> dict:
        steps, seconds = self.forwards[sampler], timings.median(self.pipelines[sampler])
        return {
            "label": row_label(f"diffusers {PIPELINE_NAMES[sampler]}", sampler, steps),
            "forwards": steps,
            "seconds": seconds,
            "network_gflops": self.flops_per_forward * steps / seconds / 1e9,
            "all_seconds": timings.all(self.pipelines[sampler]),
            **self.versus_floor(sampler, seconds, timings),
        }

    def ours_row(self, sampler: str, timings: Timings, paired: dict) -> dict:
        steps, seconds = self.forwards[sampler], timings.median(self.ours[sampler])
        pipeline_seconds = timings.median(self.pipelines[sampler])
        images, x_T = timings.output(self.ours[sampler])
        pipeline_images, pipeline_x_T = timings.output(self.pipelines[sampler])
        difference = pixel_difference(images, pipeline_images)
        return {
            "label": row_label(f"ours, {sampler.upper()}", sampler, steps),
            "forwards": steps,
            "seconds": seconds,
            "pipeline_seconds": pipeline_seconds,
            "speedup_over_pipeline": pipeline_seconds / seconds,
            "paired_ratio_to_forwards": paired[sampler]["median_ratio"],
            "rmse_to_pipeline": difference["rmse"],
            "max_abs_to_pipeline": difference["max_abs"],
            "x_T_max_abs_to_pipeline": (x_T - pipeline_x_T).abs().max().item(),
            "all_seconds": timings.all(self.ours[sampler]),
            **self.versus_floor(sampler, seconds, timings),
        }

    def summary(
        self, timings: Timings, paired: dict, own_cost: dict, ours: dict, our_flops_per_forward: int
    ) -> dict:
        """``ours``: our own network's sampler rows, for the comparison of the two whole stacks."""
        pipeline_rows = {sampler: self.pipeline_row(sampler, timings) for sampler in SAMPLERS}
        ddim_grid = f"ddim_{self.forwards['ddim']}"
        return {
            "status": "ok",
            "version": self.version,
            "folder_model": self.description,
            "flops_per_forward": self.flops_per_forward,
            "flops_ratio_to_ours": self.flops_per_forward / our_flops_per_forward,
            "floor": {"forwards": self.forwards["ddim"], "seconds": timings.median(self.floor)},
            "pipelines": pipeline_rows,
            "ours_on_folder_model": {
                sampler: self.ours_row(sampler, timings, paired) for sampler in SAMPLERS
            },
            "paired_overhead": paired,
            "own_cost": own_cost,
            # Our network and sampler against diffusers' network and pipeline: the whole stacks.
            "ours_ddpm_speedup": pipeline_rows["ddpm"]["seconds"] / ours["ddpm"]["seconds"],
            "ours_ddim_speedup": pipeline_rows["ddim"]["seconds"] / ours[ddim_grid]["seconds"],
        }


def diffusers_rows(sizes: Sizes, device: torch.device) -> DiffusersRows:
    """The cases; ImportError when diffusers is not installed."""
    import diffusers
    from diffusers.utils.torch_utils import randn_tensor

    diffusion, info = folder_model(diffusers, sizes, device)
    unet = diffusion.model.unet
    forwards = {"ddpm": sizes.timesteps, "ddim": sizes.workflow_ddim_steps}
    by_sampler = pipelines(diffusers, unet, sizes, device)
    shape = (sizes.images, *diffusion.sample_shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    ddim_timesteps = trailing_timesteps(sizes.timesteps, forwards["ddim"])
    free_unet = fixed_output_unet(diffusers, shape, device)
    free = DiffusionProcess(DiffusersUNet(free_unet), config=diffusion.config).to(device).eval()
    free_pipelines = pipelines(diffusers, free_unet, sizes, device)
    return DiffusersRows(
        version=diffusers.__version__,
        description=f"{describe_unet(sizes)}, random weights, saved as a DDPMPipeline folder and read by "
        f"load_model ({info['layout']} layout; {diffusion.describe()})",
        flops_per_forward=flops_of(lambda: unet(noise, torch.tensor(1, device=device)).sample),
        diffusion=diffusion,
        noise=noise,
        forwards=forwards,
        ours={
            sampler: Case(
                f"folder_ours_{sampler}", ours_run(randn_tensor, diffusion, sampler, steps, sizes, device)
            )
            for sampler, steps in forwards.items()
        },
        pipelines={
            sampler: Case(
                f"diffusers_{sampler}_pipeline", pipeline_run(by_sampler[sampler], sizes, steps, device)
            )
            for sampler, steps in forwards.items()
        },
        floor=Case(
            f"diffusers_floor_{forwards['ddim']}",
            forward_floor(lambda x, t: unet(x, t).sample, noise, ddim_timesteps),
            warm_up=True,
        ),
        own_cost_runs={
            sampler: {
                "ours": ours_run(randn_tensor, free, sampler, steps, sizes, device),
                "pipeline": pipeline_run(free_pipelines[sampler], sizes, steps, device),
            }
            for sampler, steps in forwards.items()
        },
    )
