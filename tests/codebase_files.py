"""Files as the codebases researchers train with write them, by their own code (test extras):
lucidrains' denoising-diffusion-pytorch Trainer file and guided-diffusion's state dict. The tests
read them as a user gives them; benchmarks/bench_codebases.py times our samplers on them."""

from __future__ import annotations

from pathlib import Path

import torch


def save_lucidrains_trainer_file(folder: Path, unet: dict, size: int, timesteps: int, ddim_steps: int):
    """denoising-diffusion-pytorch's own Trainer, two steps on 100 random size x size images (its
    minimum), and the file its Trainer.save wrote (results/model-2.pt): (trainer, path). A Unet
    with ``learned_variance`` is trained by its LearnedGaussianDiffusion, as its README says."""
    import denoising_diffusion_pytorch as ddp
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for index in range(100):
        pixels = (torch.rand(size, size, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels, mode="L").save(images / f"{index}.png")
    torch.manual_seed(0)
    process = ddp.LearnedGaussianDiffusion if unet.get("learned_variance") else ddp.GaussianDiffusion
    diffusion = process(ddp.Unet(**unet), image_size=size, timesteps=timesteps, sampling_timesteps=ddim_steps)
    trainer = ddp.Trainer(
        diffusion,
        str(images),
        train_batch_size=16,
        train_num_steps=2,
        save_and_sample_every=2,
        results_folder=str(folder / "results"),
        calculate_fid=False,
        amp=False,
        num_samples=4,
    )
    trainer.train()
    # Its EMA copies the online weights for its first 100 steps: moved off them, and saved again by
    # Trainer.save, the two networks of the file differ.
    with torch.no_grad():
        for parameter in trainer.ema.ema_model.parameters():
            parameter.add_(0.01)
    trainer.save(2)
    return trainer, folder / "results" / "model-2.pt"


def save_guided_diffusion_model(folder: Path, model: dict, timesteps: int, steps: int = 3):
    """guided-diffusion's own create_model_and_diffusion (a learned variance, cosine schedule,
    rescaled timesteps: improved-diffusion's defaults for such a model), ``steps`` AdamW steps of
    its own hybrid loss (training_losses) on random images, and the state dict saved as its
    TrainLoop saves one (model{step:06d}.pt): (network, its diffusion, path)."""
    from guided_diffusion import script_util

    torch.manual_seed(0)
    settings = script_util.model_and_diffusion_defaults()
    settings.update(model, diffusion_steps=timesteps, noise_schedule="cosine", rescale_timesteps=True)
    network, diffusion = script_util.create_model_and_diffusion(**settings)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
    shape = (8, 3, model["image_size"], model["image_size"])
    for _ in range(steps):
        x_0 = torch.rand(shape) * 2 - 1
        t = torch.randint(0, timesteps, (shape[0],))
        optimizer.zero_grad()
        diffusion.training_losses(network, x_0, t)["loss"].mean().backward()
        optimizer.step()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model{steps:06d}.pt"
    torch.save(network.state_dict(), path)
    return network.eval(), diffusion, path


def guided_diffusion_entry(path: Path, model: dict, timesteps: int) -> dict:
    """The entry a user writes for such a file: every argument of create_model as the training
    script's defaults and ``model`` gave it, and in diffusers' names the process
    save_guided_diffusion_model trained with (cosine is squaredcos_cap_v2, learn_sigma learned_range)."""
    from guided_diffusion import script_util

    code = script_util.create_model.__code__
    settings = {**script_util.model_and_diffusion_defaults(), **model}
    return {
        "entry_point": "guided_diffusion.script_util:create_model",
        "kwargs": {key: settings[key] for key in code.co_varnames[: code.co_argcount]},
        "weights": str(path),
        "sample_shape": [3, model["image_size"], model["image_size"]],
        "rescale_timesteps": True,
        "schedule": {
            "num_train_timesteps": timesteps,
            "beta_schedule": "squaredcos_cap_v2",
            "variance_type": "learned_range",
        },
    }
