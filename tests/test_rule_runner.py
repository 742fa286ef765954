"""workflow.py directly, in process, with a stand-in for the ``snakemake`` object a rule's script
gets: run_rule (the log file, the rule's threads, one error line for bad input and the whole
traceback for a bug), and the rule's model, its sampling options and the digits in its size.
(test_workflow.py runs the real snakemake.)"""

from __future__ import annotations

import logging
import re
import sys
from types import SimpleNamespace

import pytest
import torch

import diffusion_diagnostics.workflow
from diffusion_diagnostics import DiagnosticsError
from diffusion_diagnostics.checkpoint import save_checkpoint
from diffusion_diagnostics.data import MnistSplits, load_split, save_splits
from diffusion_diagnostics.diffusion import SamplingOptions
from diffusion_diagnostics.runtime import progress_bar
from diffusion_diagnostics.workflow import digits_for, load_rule_model, load_sampling_model, run_rule

from doubles import one_error_line, tiny_unet

PROCESS = {"timesteps": 20, "beta_start": 1e-3, "beta_end": 0.2}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) ([\w.]+): (.*)$")


# --- run_rule ------------------------------------------------------------------------------------


@pytest.fixture
def rule_run(monkeypatch, tmp_path):
    """A stand-in snakemake for run_rule, with what run_rule changes process-wide put back after:
    stderr, the root logger's handlers, torch's threads. glibc's malloc settings are left alone:
    keep_freed_memory is replaced by a stand-in that counts its calls."""
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # monkeypatch restores it, whatever run_rule does
    root = logging.getLogger()
    handlers, level, threads = root.handlers[:], root.level, torch.get_num_threads()
    kept = []
    monkeypatch.setattr(diffusion_diagnostics.workflow, "keep_freed_memory", lambda: kept.append(True))
    snakemake = SimpleNamespace(log=[str(tmp_path / "rule.log")], threads=2, rule="demo_rule", kept=kept)
    yield snakemake
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:], root.level = handlers, level
    torch.set_num_threads(threads)


def log_text(snakemake) -> str:
    with open(snakemake.log[0]) as handle:
        return handle.read()


def test_bad_input_is_one_error_line_in_the_log_and_on_the_terminal(rule_run, capfd):
    def main(snakemake):
        raise DiagnosticsError("checkpoint x.pt: no such file; rerun the train rule")

    with pytest.raises(SystemExit) as exit:
        run_rule(main, rule_run)
    assert exit.value.code == 1
    line = "error in rule demo_rule: checkpoint x.pt: no such file; rerun the train rule\n"
    # The user's fault: one line, no traceback, in the log and where snakemake's output goes.
    assert log_text(rule_run) == line
    assert capfd.readouterr().err == line


def test_a_bug_keeps_its_traceback_in_the_log_and_propagates(rule_run, capfd):
    def main(snakemake):
        return {}["missing key"]

    with pytest.raises(KeyError, match="missing key"):
        run_rule(main, rule_run)
    log = log_text(rule_run)
    assert log.startswith("Traceback (most recent call last):")
    assert 'return {}["missing key"]' in log and log.rstrip().endswith("KeyError: 'missing key'")
    assert "error in rule" not in log + capfd.readouterr().err


def test_a_rules_logging_stderr_and_progress_land_in_its_log(rule_run):
    def main(snakemake):
        logging.info("training on %s", "cpu")
        logging.getLogger("diffusion_diagnostics.training").info("step %d of %d", 3, 3)
        logging.debug("not at INFO level")
        print("a warning from a library", file=sys.stderr)
        for _ in progress_bar(range(3), desc="sampling"):
            pass

    run_rule(main, rule_run)
    lines = log_text(rule_run).splitlines()
    logged = [match.groups() for line in lines if (match := LOG_LINE.match(line))]
    assert logged == [
        ("INFO", "root", "training on cpu"),
        ("INFO", "diffusion_diagnostics.training", "step 3 of 3"),
    ]
    assert "a warning from a library" in lines
    assert "sampling" in lines[-1] and "3/3" in lines[-1]
    assert rule_run.kept == [True]  # freed memory kept for the rule's forward passes


@pytest.mark.parametrize("threads, expected", [(3, 3), (0, 1)])
def test_torch_gets_exactly_the_rules_threads(rule_run, threads, expected):
    torch.set_num_threads(2)  # neither value expected: the rule must set it
    seen = []
    rule_run.threads = threads
    run_rule(lambda snakemake: seen.append(torch.get_num_threads()), rule_run)
    assert seen == [expected]


def test_stderr_is_the_callers_again_after_the_rule(rule_run):
    """Whichever way main ends, stderr is what it was before: not the (closed) log file, and not
    the process's original stderr either when the caller had redirected it (a notebook, a test
    runner, a wrapper capturing the rule's output)."""

    def refuse(snakemake):
        raise DiagnosticsError("bad input")

    callers = sys.stderr
    run_rule(lambda snakemake: None, rule_run)
    after_success = sys.stderr
    with pytest.raises(SystemExit):
        run_rule(refuse, rule_run)
    assert (after_success, sys.stderr) == (callers, callers)


# --- the rule's model, its sampling options and its digits -------------------------------------


def save_tiny_checkpoint(tmp_path, image_size: int = 28):
    model = tiny_unet(image_size=image_size)
    path = tmp_path / f"model_{image_size}.pt"
    save_checkpoint(path, model, PROCESS)
    return path, model


def rule_with_model(path, image_fit: str = "pad", **sampling) -> SimpleNamespace:
    """A stand-in snakemake with the params and config the sampling rules get (common.smk)."""
    params = SimpleNamespace(
        model=str(path),
        device="cpu",
        image_fit=image_fit,
        sampling={"precision": "float32", "timestep_spacing": "trailing", "steps_offset": 0, **sampling},
    )
    return SimpleNamespace(params=params, config={"cuda_graphs": False})


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_the_rules_model_loads_on_its_device_and_is_named_in_the_log(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path, model = save_tiny_checkpoint(tmp_path)
    diffusion, info = load_rule_model(rule_with_model(path))
    assert diffusion.device == torch.device("cpu") and diffusion.config.timesteps == 20
    assert info["source"] == "checkpoint" and info["path"] == str(path)
    saved = model.state_dict()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in diffusion.model.state_dict().items())
    assert messages(caplog) == [
        f"model: diffusion-diagnostics UNet (checkpoint {path}), linear β 0.001 → 0.2, T = 20, epsilon, "
        "fixed_small, on cpu; digits as they are (28 × 28)"
    ]


def test_the_log_says_how_digits_reach_a_model_of_another_size(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path, _ = save_tiny_checkpoint(tmp_path, image_size=32)
    load_rule_model(rule_with_model(path, image_fit="pad"))
    assert messages(caplog)[0].endswith(
        "on cpu; digits padded with background from 28 × 28 to 32 × 32, and samples back the same way"
    )


def test_a_model_the_digits_cannot_be_padded_to_is_one_error_line(tmp_path):
    path, _ = save_tiny_checkpoint(tmp_path, image_size=16)
    one_error_line(
        lambda: load_rule_model(rule_with_model(path, image_fit="pad")), "16 × 16", "image_fit: resize"
    )


def test_sampling_options_carry_the_rules_settings(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path, _ = save_tiny_checkpoint(tmp_path)
    snakemake = rule_with_model(path, precision="bfloat16", timestep_spacing="leading", steps_offset=1)
    diffusion, options = load_sampling_model(snakemake, clip_x0=True, variance_type="fixed_large")
    assert options == SamplingOptions(
        clip_x0=True,
        variance_type="fixed_large",
        precision="bfloat16",
        cuda_graphs=False,
        timestep_spacing="leading",
        steps_offset=1,
    )
    assert diffusion.device == torch.device("cpu")
    assert (
        messages(caplog)[-1]
        == "sampling: forward passes in bfloat16, x0 clipped, DDIM leading spacing (offset 1)"
    )


def test_sampling_options_default_to_the_models_own_clipping(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path, _ = save_tiny_checkpoint(tmp_path)
    snakemake = rule_with_model(path)
    snakemake.config["cuda_graphs"] = True
    _, options = load_sampling_model(snakemake)
    assert options.clip_x0 is None and options.variance_type is None and options.precision == "float32"
    # Asked for in the config, but a CPU cannot capture graphs: the log does not claim them.
    assert options.cuda_graphs is True
    assert messages(caplog)[-1] == (
        "sampling: forward passes in float32, x0 clipped by DDPM as the model's clip_sample (True) says, "
        "not by DDIM, DDIM trailing spacing"
    )


def test_a_bad_sampling_setting_is_one_error_line(tmp_path):
    path, _ = save_tiny_checkpoint(tmp_path)
    snakemake = rule_with_model(path, precision="float16")
    one_error_line(lambda: load_sampling_model(snakemake), "precision 'float16'", "float32, bfloat16")


# --- digits in the model's size ------------------------------------------------------------------


@pytest.fixture
def heldout_split(tmp_path):
    """A split file as the download_mnist rule writes it (data.save_splits): uint8 digits whose
    pixels are never the background, so padding shows."""
    generator = torch.Generator().manual_seed(0)
    images = {name: torch.randint(1, 256, (n, 28, 28), dtype=torch.uint8, generator=generator)
              for name, n in (("train", 6), ("validation", 2), ("heldout", 5))}  # fmt: skip
    labels = {name: torch.arange(len(images[name])) % 10 for name in images}
    splits = MnistSplits(
        source="mnist-5k",
        images=images,
        labels=labels,
        how="hand-made digits",
        selection={name: "all of them" for name in images},
    )
    save_splits(splits, tmp_path / "data", requested_source="mnist-5k")
    return tmp_path / "data" / "heldout.pt"


def test_digits_for_a_28_pixel_model_are_the_split_itself(tmp_path, heldout_split):
    path, _ = save_tiny_checkpoint(tmp_path)
    diffusion, _ = load_rule_model(rule_with_model(path))
    images, labels = digits_for(diffusion, heldout_split, "pad").tensors
    expected_images, expected_labels = load_split(heldout_split).tensors
    assert images.shape == (5, 1, 28, 28) and torch.equal(images, expected_images)
    assert torch.equal(labels, expected_labels) and labels.tolist() == [0, 1, 2, 3, 4]


def test_digits_for_a_larger_model_are_padded_with_background(tmp_path, heldout_split):
    path, _ = save_tiny_checkpoint(tmp_path, image_size=32)
    diffusion, _ = load_rule_model(rule_with_model(path))
    images, labels = digits_for(diffusion, heldout_split, "pad").tensors
    assert images.shape == (5, *diffusion.sample_shape) == (5, 1, 32, 32)
    digits = load_split(heldout_split).tensors[0]
    # Two pixels of background on each side, the digit untouched in the middle.
    assert torch.equal(images[..., 2:30, 2:30], digits)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (images[..., border] == -1.0).all()
    assert labels.tolist() == [0, 1, 2, 3, 4]


def test_digits_for_a_smaller_model_are_resized(tmp_path, heldout_split):
    path, _ = save_tiny_checkpoint(tmp_path, image_size=16)
    diffusion, _ = load_rule_model(rule_with_model(path, image_fit="resize"))
    images, _ = digits_for(diffusion, heldout_split, "resize").tensors
    assert images.shape == (5, 1, 16, 16)
    digits = load_split(heldout_split).tensors[0]
    # Resizing keeps each image's mean brightness (antialiased bilinear, an average of pixels).
    assert images.mean(dim=(1, 2, 3)) == pytest.approx(digits.mean(dim=(1, 2, 3)), abs=0.02)
