"""load_model: what the source is decides how it is read.

Diffusers folders in both layouts, written here by diffusers' own save_pretrained, give diffusers'
network output, schedule and samplers; the user's own network loads by entry point; a Hub id is
downloaded from a stand-in Hub on 127.0.0.1; every bad input is one DiagnosticsError line. Nothing
is downloaded from the internet.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
from pathlib import Path

import diffusers
import own_network
import pytest
import torch

from diffusion_diagnostics import DiffusionProcess, load_model, save_checkpoint
from diffusion_diagnostics.diffusion import SamplingOptions
from diffusion_diagnostics.models import hub_folder_name, load_entry_point
from diffusion_diagnostics.process_config import ProcessConfig

from conftest import COMMIT, StandInHub
from doubles import one_error_line, tiny_unet, tiny_unet2d

T = 30


def diffusers_unet(seed: int = 0, **config):
    return tiny_unet2d(seed, **{"sample_size": 16, **config}).eval()


def save_folder(path: Path, layout: str, unet, scheduler, safe: bool = True) -> Path:
    """A folder as diffusers' save_pretrained writes it: a pipeline, or UNet and scheduler side by side."""
    if layout == "pipeline":
        pipeline = (
            diffusers.DDIMPipeline
            if isinstance(scheduler, diffusers.DDIMScheduler)
            else diffusers.DDPMPipeline
        )
        pipeline(unet=unet, scheduler=scheduler).save_pretrained(path, safe_serialization=safe)
    else:
        unet.save_pretrained(path, safe_serialization=safe)
        scheduler.save_pretrained(path)
    return path


def ddpm_folder(path: Path, layout: str, unet=None, safe: bool = True) -> Path:
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T)
    return save_folder(path, layout, unet or diffusers_unet(), scheduler, safe)


@pytest.fixture
def pipeline_folder(tmp_path):
    return ddpm_folder(tmp_path / "pipeline", "pipeline")


@pytest.fixture
def flat_folder(tmp_path):
    return ddpm_folder(tmp_path / "flat", "flat")


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def refused(source, *words: str, **kwargs) -> str:
    """load_model(source) stops with one DiagnosticsError line holding every one of ``words``."""
    return one_error_line(lambda: load_model(source, **kwargs), *words)


def diffusers_ddim(unet, scheduler, x: torch.Tensor, num_steps: int) -> torch.Tensor:
    """diffusers' DDIMPipeline loop, η = 0."""
    scheduler.set_timesteps(num_steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    return x


def diffusers_ddpm(unet, scheduler, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """diffusers' DDPMPipeline loop over all T timesteps."""
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
    return x


# --- diffusers folders --------------------------------------------------------------------------


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("layout", ["pipeline", "flat"])
def test_folder_gives_the_diffusers_network_and_schedule(tmp_path, layout, safe):
    unet = diffusers_unet()
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_start=1e-3, beta_end=0.05, beta_schedule="scaled_linear"
    )
    folder = save_folder(tmp_path / "model", layout, unet, scheduler, safe)
    weights = next(folder.rglob("diffusion_pytorch_model.*"))
    assert weights.suffix == (".safetensors" if safe else ".bin")

    diffusion, info = load_model(folder)

    assert isinstance(diffusion, DiffusionProcess) and not diffusion.training
    assert diffusion.sample_shape == (1, 16, 16)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 7, T - 1])
    with torch.no_grad():
        torch.testing.assert_close(diffusion.model(x, t), unet(x, t).sample)
    torch.testing.assert_close(diffusion.betas, scheduler.betas)
    torch.testing.assert_close(diffusion.alphas_cumprod, scheduler.alphas_cumprod)
    assert info["source"] == "diffusers" and info["layout"] == layout and info["scheduler"] == "DDPMScheduler"
    assert info["path"] == str(folder)
    assert info["description"] == (
        f"diffusers UNet2DModel ({layout} folder {folder}), scaled_linear β 0.001 → 0.05, T = {T}, "
        "epsilon, fixed_small"
    )


@pytest.mark.parametrize(
    ("saving", "written"),
    [
        ({"variant": "fp16"}, "diffusion_pytorch_model.fp16.safetensors"),
        ({"variant": "fp16", "safe_serialization": False}, "diffusion_pytorch_model.fp16.bin"),
        ({"max_shard_size": "20KB"}, "diffusion_pytorch_model.safetensors.index.json"),
        (
            {"variant": "fp16", "max_shard_size": "20KB"},
            "diffusion_pytorch_model.safetensors.index.fp16.json",
        ),
    ],
    ids=["fp16", "fp16-bin", "sharded", "sharded-fp16"],
)
def test_weights_as_diffusers_publishes_them_are_read(tmp_path, caplog, saving, written):
    """A variant (save_pretrained(variant="fp16"), the only weights some Hub folders have) is read
    and upcast to float32, and said; shards are read through their index."""
    unet = diffusers_unet()
    if "variant" in saving:
        unet = unet.half()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T)
    folder = tmp_path / "model"
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, **saving)
    assert (folder / "unet" / written).is_file()
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()

    diffusion, _ = load_model(folder)

    assert all(parameter.dtype == torch.float32 for parameter in diffusion.model.parameters())
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 7, T - 1])
    with torch.no_grad():
        torch.testing.assert_close(diffusion.model(x, t), unet.float()(x, t).sample)
    assert ("the fp16 variant of the weights, read as float32" in caplog.text) == ("variant" in saving)


def test_sample_size_may_be_a_pair(tmp_path):
    unet = diffusers_unet(sample_size=(16, 8))
    folder = ddpm_folder(tmp_path / "model", "flat", unet)

    diffusion, _ = load_model(folder)

    assert diffusion.sample_shape == (1, 16, 8)


def test_a_unet_without_sample_size_is_refused(tmp_path):
    folder = ddpm_folder(tmp_path / "model", "flat", diffusers_unet(sample_size=None))

    refused(folder, "config.json: sample_size is not set")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(("spacing", "offset"), [("trailing", 0), ("leading", 1)])
def test_ddim_sample_equals_diffusers_ddim(tmp_path, spacing, offset, prediction_type):
    unet = diffusers_unet()
    # Our DDIM clips x̂_0 only when asked, diffusers' as its config says: both ways, asked alike.
    clip = prediction_type == "v_prediction"
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        timestep_spacing=spacing,
        steps_offset=offset,
        prediction_type=prediction_type,
        clip_sample=clip,
    )
    folder = save_folder(tmp_path / "model", "pipeline", unet, scheduler)
    diffusion, info = load_model(folder)
    assert (info["scheduler"], info["timestep_spacing"], info["steps_offset"]) == (
        "DDIMScheduler",
        spacing,
        offset,
    )
    x_T = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))

    ours = diffusion.sample_ddim(
        x_T,
        num_steps=10,
        options=SamplingOptions(clip_x0=clip, timestep_spacing=spacing, steps_offset=offset),
    )

    torch.testing.assert_close(ours, diffusers_ddim(unet, scheduler, x_T, 10), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("prediction_type", "variance_type"),
    [
        ("epsilon", "fixed_small"),
        ("epsilon", "fixed_large"),
        ("v_prediction", "fixed_small"),
        ("v_prediction", "fixed_large"),
        ("epsilon", "fixed_small_log"),
    ],
)
def test_ddpm_sample_equals_diffusers_ddpm(tmp_path, prediction_type, variance_type):
    unet = diffusers_unet()
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T, prediction_type=prediction_type, variance_type=variance_type
    )
    folder = save_folder(tmp_path / "model", "flat", unet, scheduler)
    diffusion, _ = load_model(folder)
    x_T = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))

    ours = diffusion.sample(x_T, generator=torch.Generator().manual_seed(5))

    theirs = diffusers_ddpm(unet, scheduler, x_T, torch.Generator().manual_seed(5))
    # diffusers' step recomputes β_t as 1 - ᾱ_t / ᾱ_{t-1} in float32, 3e-5 off β itself here, so its
    # σ_t and then its samples differ from these in the fifth digit (2.5e-5 at most over 30 steps).
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_log_variances_read_as_the_same_variances(tmp_path):
    # diffusers' own DDPM step turns fixed_large_log into NaN (it takes the square root of log β), so
    # this one is checked by what it is read as, not against diffusers' sampler.
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, variance_type="fixed_large_log")
    folder = save_folder(tmp_path / "model", "flat", diffusers_unet(), scheduler)

    diffusion, _ = load_model(folder)

    assert diffusion.variance_type == "fixed_large"


@pytest.mark.parametrize("scheduler", [diffusers.DDPMScheduler, diffusers.DDIMScheduler])
def test_the_process_defaults_are_diffusers_scheduler_defaults(scheduler):
    """A key a config leaves out means the same here as in diffusers (and the planner, which has
    no diffusers, fills it in from ProcessConfig)."""
    assert ProcessConfig.from_scheduler_config(dict(scheduler().config), "defaults") == ProcessConfig()


def test_old_scheduler_config_takes_diffusers_defaults(flat_folder):
    old = {"num_train_timesteps": 40, "beta_start": 0.001, "beta_end": 0.03, "beta_schedule": "linear"}
    (flat_folder / "scheduler_config.json").write_text(json.dumps(old))
    defaults = diffusers.DDPMScheduler().config

    diffusion, info = load_model(flat_folder)

    assert info["scheduler"] == "DDPMScheduler"
    assert (diffusion.timesteps, diffusion.config.beta_start, diffusion.config.beta_end) == (40, 0.001, 0.03)
    assert diffusion.prediction_type == defaults["prediction_type"]
    assert diffusion.variance_type == defaults["variance_type"]
    assert diffusion.clip_sample == defaults["clip_sample"]
    assert diffusion.clip_sample_range == defaults["clip_sample_range"]
    torch.testing.assert_close(diffusion.betas, diffusers.DDPMScheduler.from_config(old).betas)


# --- our own checkpoint and the user's own network ----------------------------------------------


def test_own_checkpoint_carries_its_training_metadata(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_unet(), {"timesteps": 20}, {"best_step": 6})

    diffusion, info = load_model(path)

    assert info["source"] == "checkpoint" and info["path"] == str(path)
    assert info["training"] == {"best_step": 6}
    assert info["description"] == f"diffusion-diagnostics UNet (checkpoint {path}), {diffusion.describe()}"


def own_weights(path: Path, width: int = 8) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        network = own_network.build(width=width).eval()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(network.state_dict(), path)
    else:
        torch.save(network.state_dict(), path)
    return network


def own_entry(weights: Path, **changes) -> dict:
    return {
        "entry_point": "own_network:build",
        "weights": str(weights),
        "kwargs": {"width": 8},
        "sample_shape": [1, 8, 8],
        **changes,
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_entry_point_builds_the_users_network_with_its_weights(tmp_path, suffix):
    network = own_weights(tmp_path / f"weights{suffix}")
    schedule = {
        "num_train_timesteps": 20,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "variance_type": "fixed_large",
        "timestep_spacing": "leading",
        "steps_offset": 1,
    }

    diffusion, info = load_model(own_entry(tmp_path / f"weights{suffix}", schedule=schedule))

    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 19])
    with torch.no_grad():
        torch.testing.assert_close(diffusion.model(x, t), network(x, t))
    assert diffusion.sample_shape == (1, 8, 8) and not diffusion.training
    assert (diffusion.timesteps, diffusion.config.beta_schedule) == (20, "squaredcos_cap_v2")
    assert (diffusion.prediction_type, diffusion.variance_type) == ("v_prediction", "fixed_large")
    assert info["source"] == "entry_point" and info["entry_point"] == "own_network:build"
    assert (info["timestep_spacing"], info["steps_offset"]) == ("leading", 1)
    assert info["description"] == (
        f"network own_network:build (weights {tmp_path / f'weights{suffix}'}), squaredcos_cap_v2 β, "
        "T = 20, v_prediction, fixed_large"
    )


def test_entry_point_schedule_left_out_takes_the_defaults_without_diffusers(tmp_path, monkeypatch):
    own_weights(tmp_path / "weights.pt")
    for extra in ("diffusers", "huggingface_hub", "safetensors"):
        monkeypatch.setitem(sys.modules, extra, None)

    diffusion, _ = load_entry_point(own_entry(tmp_path / "weights.pt"))

    assert diffusion.schedule_config() == DiffusionProcess(torch.nn.Identity()).schedule_config()


# --- the Hub ------------------------------------------------------------------------------------


@pytest.fixture
def stand_in_hub(tmp_path, monkeypatch):
    folder = ddpm_folder(tmp_path / "served", "pipeline")
    # What the Hub also holds and a model folder does not need.
    (folder / "README.md").write_text("# a tiny DDPM")
    (folder / "unet" / "diffusion_flax_model.msgpack").write_bytes(b"flax weights")
    hub = StandInHub(folder, "owner/tiny-ddpm", revisions=("main", "v1.0", "refs/pr/3"))
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    yield hub
    hub.shutdown()
    hub.server_close()


MODEL_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
]


def test_hub_id_is_read_as_the_folder_it_downloads(stand_in_hub, tmp_path):
    models = tmp_path / "resources" / "models"

    diffusion, info = load_model("hf:owner/tiny-ddpm", hub_root=models)

    folder = models / "owner--tiny-ddpm"
    assert info["hub_id"] == "hf:owner/tiny-ddpm" and info["layout"] == "pipeline"
    assert info["path"] == str(folder)
    assert info["description"].startswith(
        f"diffusers UNet2DModel (hf:owner/tiny-ddpm, pipeline folder {folder}),"
    )
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, T - 1])
    with torch.no_grad():
        torch.testing.assert_close(diffusion.model(x, t), diffusers_unet()(x, t).sample)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == MODEL_FILES
    assert [entry.name for entry in models.iterdir()] == ["owner--tiny-ddpm"]  # no partial folder left


def test_hub_download_asks_what_the_hub_answers_for_the_model_files_only(stand_in_hub, tmp_path):
    load_model("hf:owner/tiny-ddpm", hub_root=tmp_path / "models")

    resolve = f"/owner/tiny-ddpm/resolve/{COMMIT}/"
    assert {(method, path.split(resolve)[0]) for method, path in stand_in_hub.requests} == {
        ("GET", "/api/models/owner/tiny-ddpm/revision/main"),
        ("GET", f"/api/models/owner/tiny-ddpm/tree/{COMMIT}"),
        ("HEAD", ""),
        ("GET", ""),
    }
    downloads = [path.removeprefix(resolve) for method, path in stand_in_hub.requests if resolve in path]
    assert sorted(downloads) == sorted(MODEL_FILES * 2)  # each file: one HEAD, one GET


def test_hub_id_is_downloaded_once(stand_in_hub, tmp_path):
    load_model("hf:owner/tiny-ddpm", hub_root=tmp_path)
    stand_in_hub.requests.clear()

    load_model("hf:owner/tiny-ddpm", hub_root=tmp_path)

    assert stand_in_hub.requests == []


@pytest.mark.parametrize(("revision", "name"), [("v1.0", "v1.0"), ("refs/pr/3", "refs-pr-3")])
def test_hub_revision_has_its_own_folder(stand_in_hub, tmp_path, revision, name):
    _, info = load_model(f"hf:owner/tiny-ddpm@{revision}", hub_root=tmp_path)

    assert info["path"] == str(tmp_path / f"owner--tiny-ddpm--{name}")
    assert ("GET", f"/api/models/owner/tiny-ddpm/revision/{revision}") in stand_in_hub.requests


def test_hub_unknown_revision_or_repository_is_one_line(stand_in_hub, tmp_path):
    models = tmp_path / "models"
    refused("hf:owner/tiny-ddpm@v9", "hf:owner/tiny-ddpm@v9", "no revision 'v9'", hub_root=models)
    refused("hf:owner/other", "hf:owner/other", "no such repository", hub_root=models)
    assert list(models.iterdir()) == []


def test_hub_without_network_says_how_to_download_by_hand(tmp_path, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")

    destination = tmp_path / "owner--name"
    refused(
        "hf:owner/name",
        "hf:owner/name",
        f"hf download owner/name --local-dir {destination}",
        f"git clone http://127.0.0.1:{closed_port}/owner/name {destination}",
        "point checkpoint: at it",
        hub_root=tmp_path,
    )
    assert list(tmp_path.iterdir()) == []


def test_hub_folder_names():
    assert hub_folder_name("hf:google/ddpm-cifar10-32") == "google--ddpm-cifar10-32"
    assert hub_folder_name("hf:google/ddpm-cifar10-32@v1.0") == "google--ddpm-cifar10-32--v1.0"
    assert hub_folder_name("hf:owner/name@refs/pr/3") == "owner--name--refs-pr-3"


@pytest.mark.parametrize("hub_id", ["hf:name", "hf:a/b/c", "hf:a--b/c", "hf:a/b@", "hf:ow ner/b"])
def test_malformed_hub_id_is_one_line(hub_id, tmp_path):
    refused(hub_id, hub_id, "hf:owner/name", hub_root=tmp_path)


# --- bad input: one line each -------------------------------------------------------------------


def test_missing_path_says_how_to_train_instead(tmp_path):
    refused(
        tmp_path / "none.pt",
        str(tmp_path / "none.pt"),
        "set checkpoint: train to train a model with the workflow",
    )


def test_folder_of_neither_layout(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    refused(
        tmp_path,
        str(tmp_path),
        "neither a diffusers pipeline folder",
        "model_index.json",
        "scheduler_config.json",
    )


def test_diffusers_not_installed_says_how_to_install(pipeline_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    refused(pipeline_folder, str(pipeline_folder), 'pip install -e ".[diffusers]"')


def test_huggingface_hub_not_installed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    refused("hf:owner/name", "hf:owner/name", 'pip install -e ".[diffusers]"', hub_root=tmp_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("beta_schedule", "no_such_schedule"),
        ("beta_schedule", "sigmoid"),  # diffusers has it, the samplers here do not
        ("prediction_type", "flow"),
        ("variance_type", "fixed_medium"),
        ("thresholding", True),
        ("rescale_betas_zero_snr", True),
        ("_class_name", "PNDMScheduler"),
    ],
)
def test_scheduler_config_it_cannot_honour(pipeline_folder, key, value):
    config = pipeline_folder / "scheduler" / "scheduler_config.json"
    edit_json(config, **{key: value})
    refused(pipeline_folder, str(config), key, str(value).lower() if isinstance(value, bool) else value)


def test_missing_weights_file(pipeline_folder):
    (pipeline_folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    refused(pipeline_folder, str(pipeline_folder / "unet"), "diffusion_pytorch_model.safetensors or")


def test_missing_scheduler_config(pipeline_folder):
    shutil.rmtree(pipeline_folder / "scheduler")
    refused(pipeline_folder, str(pipeline_folder / "scheduler" / "scheduler_config.json"), "no such file")


def test_unreadable_json(flat_folder):
    (flat_folder / "scheduler_config.json").write_text("{not json")
    refused(flat_folder, str(flat_folder / "scheduler_config.json"), "not a readable JSON file")


def test_another_pipeline(pipeline_folder):
    edit_json(pipeline_folder / "model_index.json", _class_name="LDMPipeline", vqvae=["diffusers", "VQModel"])
    refused(pipeline_folder, str(pipeline_folder / "model_index.json"), "LDMPipeline", "latent pipeline")


def test_conditional_unet(pipeline_folder, flat_folder):
    edit_json(pipeline_folder / "model_index.json", unet=["diffusers", "UNet2DConditionModel"])
    refused(pipeline_folder, str(pipeline_folder / "model_index.json"), "UNet2DConditionModel")
    edit_json(flat_folder / "config.json", _class_name="UNet2DConditionModel")
    refused(flat_folder, str(flat_folder / "config.json"), "_class_name", "UNet2DConditionModel")


def test_class_conditional_unet(tmp_path):
    unet = diffusers_unet(num_class_embeds=10)
    folder = ddpm_folder(tmp_path / "model", "flat", unet)
    refused(folder, str(folder / "config.json"), "num_class_embeds", "class-conditional")


def test_learned_variance_unet(tmp_path):
    unet = diffusers_unet(out_channels=2)
    folder = ddpm_folder(tmp_path / "model", "flat", unet)
    refused(folder, str(folder / "config.json"), "out_channels 2", "learned variance")


def test_folder_weights_of_another_network(flat_folder, tmp_path):
    other = diffusers_unet(block_out_channels=(8, 24))
    other.save_pretrained(tmp_path / "other")
    weights = flat_folder / "diffusion_pytorch_model.safetensors"
    shutil.copy(tmp_path / "other" / "diffusion_pytorch_model.safetensors", weights)
    refused(flat_folder, str(weights), "do not fit", "wrong shape")


def test_folder_weights_missing_some_tensors(flat_folder):
    from safetensors.torch import load_file, save_file

    weights = flat_folder / "diffusion_pytorch_model.safetensors"
    state_dict = load_file(weights)
    del state_dict["conv_in.weight"]
    save_file(state_dict, weights)
    refused(flat_folder, str(weights), "do not fit", "missing: conv_in.weight")


class RunsCode:
    """Unpickling this creates ``marker``: whether the file exists tells whether a loader ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_code_in_bin_weights_never_runs(tmp_path):
    folder = ddpm_folder(tmp_path / "model", "flat", safe=False)
    marker = tmp_path / "code-ran"
    torch.save({"conv_in.weight": RunsCode(marker)}, folder / "diffusion_pytorch_model.bin")

    refused(folder, str(folder / "diffusion_pytorch_model.bin"), "could run code")

    assert not marker.exists()


def test_code_in_entry_point_weights_never_runs(tmp_path):
    marker, weights = tmp_path / "code-ran", tmp_path / "weights.pt"
    torch.save({"conv_in.weight": RunsCode(marker)}, weights)

    refused(own_entry(weights), str(weights), "refused", "could run code")

    assert not marker.exists()
    torch.load(weights, weights_only=False)  # the payload is live: the refusal above is what stopped it
    assert marker.exists()


@pytest.mark.parametrize(
    ("entry_point", "words"),
    [
        ("no_such_package.module:build", ("cannot import no_such_package.module", "PYTHONPATH")),
        ("own_network:no_such_function", ("has no function no_such_function",)),
        ("own_network:not_a_network", ("returned a str, not a torch.nn.Module",)),
        ("own_network.build", ("package.module:function",)),
    ],
)
def test_entry_point_that_gives_no_network(tmp_path, entry_point, words):
    own_weights(tmp_path / "weights.pt")
    refused(own_entry(tmp_path / "weights.pt", entry_point=entry_point), entry_point, *words)


def test_entry_point_weights_that_do_not_fit(tmp_path):
    weights = tmp_path / "weights.pt"
    own_weights(weights, width=8)
    refused(own_entry(weights, kwargs={"width": 4}), str(weights), "do not fit", "wrong shape")


def test_entry_point_weights_missing_or_not_a_state_dict(tmp_path):
    refused(own_entry(tmp_path / "none.pt"), str(tmp_path / "none.pt"), "no such file")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    refused(own_entry(tmp_path / "list.pt"), str(tmp_path / "list.pt"), "not a state dict")
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors")
    refused(own_entry(tmp_path / "garbage.safetensors"), str(tmp_path / "garbage.safetensors"), "safetensors")


def test_entry_point_spec_errors(tmp_path):
    weights = tmp_path / "weights.pt"
    own_weights(weights)
    refused(own_entry(weights, colour="red"), "own_network:build", "unknown key colour")
    refused({"entry_point": "own_network:build"}, "weights, sample_shape missing")
    refused(own_entry(weights, sample_shape=[1, 0, 8]), "sample_shape")
    refused(own_entry(weights, schedule={"thresholding": True}), "schedule key thresholding")
    refused(
        own_entry(weights, schedule={"prediction_type": "flow"}),
        "own_network:build",
        "prediction_type 'flow'",
    )
