"""runtime.py directly: which device a name resolves to (and one error line for a name that cannot
be served), the autocast dtype of each precision, where a module lives, and progress bars that
write where they are told and, in a log file, only every 15 s."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from torch import nn

from diffusion_diagnostics.runtime import autocast_dtype, model_device, progress_bar, resolve_device

from doubles import one_error_line

# --- devices -------------------------------------------------------------------------------------


def test_auto_is_the_gpu_when_one_is_visible_else_the_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device() == resolve_device("auto")


def test_cpu_is_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "banana", "cuda:x", ""])
def test_a_name_that_is_no_device_is_one_error_line_listing_the_choices(spec):
    one_error_line(lambda: resolve_device(spec), f"device '{spec}'", "not a device name", "auto, cpu or cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful where no CUDA GPU is visible")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_error_line_naming_the_remedy(spec):
    # An error, not a silent fall-back to the CPU that would make a GPU job take hours.
    one_error_line(
        lambda: resolve_device(spec),
        f"device '{spec}'",
        "no CUDA GPU is visible",
        torch.__version__,
        "set device: auto or device: cpu",
    )


# --- precision -----------------------------------------------------------------------------------


def test_float32_runs_without_autocast_and_bfloat16_autocasts_to_it():
    assert autocast_dtype("float32") is None
    assert autocast_dtype("bfloat16") is torch.bfloat16


@pytest.mark.parametrize("precision", ["float16", "fp32", "bf16", "Float32"])
def test_another_precision_is_one_error_line_listing_the_choices(precision):
    one_error_line(lambda: autocast_dtype(precision), f"precision '{precision}'", "float32, bfloat16")


# --- where a module lives ------------------------------------------------------------------------


def test_model_device_is_where_the_parameters_are():
    assert model_device(nn.Linear(2, 3)) == torch.device("cpu")
    # The meta device tells a read of the parameters from a constant answer.
    assert model_device(nn.Linear(2, 3, device="meta")) == torch.device("meta")


def test_a_module_without_parameters_lives_on_the_cpu():
    assert model_device(nn.Sequential(nn.ReLU(), nn.Flatten())) == torch.device("cpu")


# --- progress bars -------------------------------------------------------------------------------


class Terminal(io.StringIO):
    """A stand-in stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_writes_to_the_file_given():
    log = io.StringIO()
    assert sum(progress_bar(range(5), file=log, desc="sampling")) == 10  # iterates as it was given
    written = log.getvalue()
    assert "sampling" in written and "5/5" in written


def test_progress_bar_in_a_log_file_updates_every_15_seconds(monkeypatch):
    # A rule's stderr is its log file (workflow.run_rule), which is no terminal.
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress_bar(total=3, desc="training")
    bar.update(3)
    bar.close()
    assert bar.mininterval == 15.0
    assert "training" in log.getvalue() and "3/3" in log.getvalue()


def test_progress_bar_on_a_terminal_updates_often(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar(total=2) as bar:
        bar.update(2)
    assert bar.mininterval == 0.5
    assert "2/2" in terminal.getvalue()


def test_progress_bar_keeps_an_interval_given():
    with progress_bar(total=1, file=io.StringIO(), mininterval=2.0) as bar:
        assert bar.mininterval == 2.0


FREED_MEMORY_PROBE = """
import ctypes, sys

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]


libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
took = False
if sys.argv[1] == "keep":  # the default case need not import the package (and torch) at all
    from diffusion_diagnostics.runtime import keep_freed_memory

    took = keep_freed_memory()
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd  # bytes in blocks of their own mmap, which free() unmaps
libc.free(ctypes.c_void_p(block))
print(took, mapped >= 64 << 20, libc.mallinfo2().fordblks >= 64 << 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_keep_freed_memory_keeps_large_freed_blocks_for_reuse():
    """A 64 MiB block: by default glibc gives it its own mapping and unmaps it when freed; after
    keep_freed_memory it comes from the heap and stays there, free for the next allocation."""
    probe = FREED_MEMORY_PROBE
    answers = {
        mode: subprocess.run(
            [sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True
        ).stdout.split()
        for mode in ("default", "keep")
    }
    assert answers["default"] == ["False", "True", "False"]
    assert answers["keep"] == ["True", "False", "True"]
