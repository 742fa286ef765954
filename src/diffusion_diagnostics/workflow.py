"""What every rule's script does around its work: log, threads, one error line; and the rule's
model with its sampling options and the digits in its size."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

import torch
from torch.utils.data import TensorDataset

from .data import load_split
from .diffusion import DiffusionProcess, SamplingOptions
from .digits import check_fit, to_model_size
from .errors import DiagnosticsError
from .graphs import can_capture
from .models import load_model
from .runtime import keep_freed_memory, resolve_device


def run_rule(main: Callable[[object], None], snakemake) -> None:
    """Run ``main(snakemake)`` with stderr and logging sent to the rule's log file.

    torch gets exactly the rule's threads, and freed memory is kept for reuse (see
    :func:`~diffusion_diagnostics.runtime.keep_freed_memory`). A DiagnosticsError becomes one
    ``error:`` line in the log and on the terminal and a non-zero exit; anything else is a bug and
    keeps its traceback. Stderr and the logging handlers are the caller's again afterwards.
    """
    callers_stderr, root = sys.stderr, logging.getLogger()
    callers_handlers, callers_level = root.handlers[:], root.level
    with open(snakemake.log[0], "w") as log_file:
        sys.stderr = log_file
        to_log = logging.StreamHandler(log_file)
        to_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.handlers[:] = [to_log]
        root.setLevel(logging.INFO)
        torch.set_num_threads(max(1, int(snakemake.threads)))
        keep_freed_memory()
        try:
            main(snakemake)
        except DiagnosticsError as error:
            message = f"error in rule {snakemake.rule}: {error}"
            print(message, file=log_file, flush=True)
            print(message, file=callers_stderr, flush=True)
            sys.exit(1)
        except Exception:
            # A bug, not bad input: keep the whole traceback in the log.
            traceback.print_exc(file=log_file)
            raise
        finally:
            sys.stderr = callers_stderr
            root.handlers[:] = callers_handlers
            root.setLevel(callers_level)


def load_rule_model(snakemake) -> tuple[DiffusionProcess, dict]:
    """The rule's model (``params.model``: what load_model reads) on the rule's device
    (``params.device``), said in the log with how digits are brought to its size."""
    diffusion, info = load_model(snakemake.params.model, resolve_device(snakemake.params.device))
    fit = check_fit(diffusion.sample_shape, snakemake.params.image_fit)
    logging.info("model: %s, on %s; digits %s", info["description"], diffusion.device, fit)
    return diffusion, info


def digits_for(diffusion: DiffusionProcess, split_path, fit: str) -> TensorDataset:
    """A saved split as (image, label) pairs in the model's image size (see .digits)."""
    images, labels = load_split(split_path).tensors
    return TensorDataset(to_model_size(images, diffusion.sample_shape, fit), labels)


def load_sampling_model(
    snakemake, clip_x0: bool | None = None, variance_type: str | None = None
) -> tuple[DiffusionProcess, SamplingOptions]:
    """The rule's model (load_rule_model) and the options every sampling rule runs it with: the
    rule's ``params.sampling`` (precision, DDIM timestep spacing), ``clip_x0`` and
    ``variance_type`` (None: the model's own), and sampler steps replayed as CUDA graphs where
    the config asks and the device is a GPU. The last changes no result, so it is read from the
    config, not a rule parameter that would rerun jobs."""
    diffusion, _ = load_rule_model(snakemake)
    options = SamplingOptions(
        clip_x0=clip_x0,
        variance_type=variance_type,
        cuda_graphs=snakemake.config["cuda_graphs"],
        **snakemake.params.sampling,
    )
    clipping = {
        True: "clipped",
        False: "not clipped",
        None: f"clipped by DDPM as the model's clip_sample ({diffusion.clip_sample}) says, not by DDIM",
    }
    logging.info(
        "sampling: forward passes in %s, x0 %s, DDIM %s spacing%s%s",
        options.precision,
        clipping[clip_x0],
        options.timestep_spacing,
        f" (offset {options.steps_offset})" if options.timestep_spacing == "leading" else "",
        ", steps as CUDA graphs" if options.cuda_graphs and can_capture(diffusion.device) else "",
    )
    return diffusion, options
