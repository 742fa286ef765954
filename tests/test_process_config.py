"""The process's configuration in its one home, ProcessConfig: its defaults are diffusers', it maps
diffusers' scheduler keys, refuses what the samplers cannot honour in one line, round-trips through
a checkpoint's dict, and is read by the planner without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diffusion_diagnostics import DiffusionProcess
from diffusion_diagnostics.process_config import ProcessConfig

from doubles import one_error_line


def test_a_process_gives_back_the_config_it_was_built_from():
    config = ProcessConfig(timesteps=50, beta_schedule="scaled_linear", prediction_type="v_prediction")
    diffusion = DiffusionProcess(None, config=config)
    assert diffusion.config is config
    assert (
        DiffusionProcess(None, 50, beta_schedule="scaled_linear", prediction_type="v_prediction").config
        == config
    )
    assert ProcessConfig.from_dict(diffusion.schedule_config()) == config
    with pytest.raises(TypeError):
        DiffusionProcess(None, 50, config=config)


def test_a_checkpoints_dict_keeps_its_order_and_trained_betas_only_when_there():
    assert list(ProcessConfig().to_dict()) == [
        "timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "prediction_type",
        "variance_type",
        "clip_sample",
        "clip_sample_range",
        "set_alpha_to_one",
    ]
    trained = ProcessConfig(timesteps=3, trained_betas=[0.1, 0.2, 0.3])
    assert trained.to_dict()["trained_betas"] == [0.1, 0.2, 0.3]
    assert ProcessConfig.from_dict(trained.to_dict()) == trained


def test_diffusers_keys_map_onto_the_fields():
    config = ProcessConfig.from_scheduler_config(
        {
            "num_train_timesteps": 40,
            "beta_schedule": "squaredcos_cap_v2",
            "variance_type": "fixed_large_log",  # diffusers' log-space name for the same variance
            "timestep_spacing": "leading",  # a sampling option, not the process's
            "_class_name": "DDIMScheduler",
        },
        "scheduler_config.json",
    )
    assert config == ProcessConfig(
        timesteps=40, beta_schedule="squaredcos_cap_v2", variance_type="fixed_large"
    )


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"thresholding": True}, ("thresholding: true",)),
        ({"rescale_betas_zero_snr": True}, ("rescale_betas_zero_snr",)),
        ({"variance_type": "fixed_medium"}, ("variance_type 'fixed_medium'", "learned_range")),
        ({"prediction_type": "noise"}, ("prediction_type 'noise'", "epsilon, v_prediction, sample")),
        ({"beta_schedule": "exponential"}, ("beta_schedule 'exponential'",)),
        ({"num_train_timesteps": "many"}, ("a value of the wrong type",)),
    ],
)
def test_what_the_samplers_cannot_honour_is_one_line_naming_where(settings, words):
    message = one_error_line(
        lambda: ProcessConfig.from_scheduler_config(settings, "my/scheduler.json"), *words
    )
    assert message.startswith("my/scheduler.json: ")


def test_an_unknown_key_of_our_own_names_is_one_line():
    one_error_line(
        lambda: ProcessConfig.from_dict({"steps": 10}, "checkpoint x.pt"), "unknown key steps", "timesteps"
    )


def test_the_one_line_summary():
    assert ProcessConfig().summary() == "linear β 0.0001 → 0.02, T = 1000, epsilon, fixed_small"
    assert (
        ProcessConfig(beta_schedule="squaredcos_cap_v2").summary().startswith("squaredcos_cap_v2 β, T = 1000")
    )
    assert ProcessConfig(timesteps=2, trained_betas=[0.1, 0.2]).summary().startswith("trained betas, T = 2")


def test_the_planners_modules_import_without_torch():
    probe = (
        "import sys; import diffusion_diagnostics.sources, diffusion_diagnostics.config; "
        "print(sorted(m for m in ('torch', 'torchvision', 'diffusers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
