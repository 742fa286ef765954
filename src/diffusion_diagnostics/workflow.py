"""What every script under scripts/ does around its rule's work: log, threads, error line."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

import torch

from .checkpoint import load_checkpoint
from .diffusion import DiffusionProcess, SamplingOptions
from .errors import DiagnosticsError
from .graphs import can_capture
from .runtime import keep_freed_memory, resolve_device


def run_rule(main: Callable[[object], None], snakemake) -> None:
    """Run ``main(snakemake)`` with stderr and logging sent to the rule's log file.

    torch gets exactly the rule's threads, and freed memory is kept for reuse (see
    :func:`~diffusion_diagnostics.runtime.keep_freed_memory`). A DiagnosticsError becomes one
    ``error:`` line in the log and on the terminal and a non-zero exit; anything else is a bug and
    keeps its traceback.
    """
    with open(snakemake.log[0], "w") as log_file:
        sys.stderr = log_file
        logging.basicConfig(
            stream=log_file,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            force=True,
        )
        torch.set_num_threads(max(1, int(snakemake.threads)))
        keep_freed_memory()
        try:
            main(snakemake)
        except DiagnosticsError as error:
            message = f"error in rule {snakemake.rule}: {error}"
            print(message, file=log_file, flush=True)
            print(message, file=sys.__stderr__, flush=True)
            sys.exit(1)
        except Exception:
            # A bug, not bad input: keep the whole traceback in the log.
            traceback.print_exc(file=log_file)
            raise
        finally:
            sys.stderr = sys.__stderr__


def load_sampling_model(
    snakemake, clip_x0: bool | None = None, **choices
) -> tuple[DiffusionProcess, SamplingOptions]:
    """The rule's model (``input.model``) on the rule's device (``params.device``), and the
    options every sampling rule runs it with: the rule's precision (``params.precision``),
    ``clip_x0`` (None: the model's own default) and any other ``choices`` of SamplingOptions;
    sampler steps replayed as CUDA graphs where the config asks and the device is a GPU. The last
    changes no result, so it is read from the config, not a rule parameter that would rerun jobs."""
    diffusion, _ = load_checkpoint(snakemake.input.model, resolve_device(snakemake.params.device))
    options = SamplingOptions(
        clip_x0=clip_x0,
        precision=snakemake.params.precision,
        cuda_graphs=snakemake.config["cuda_graphs"],
        **choices,
    )
    logging.info(
        "model %s (%s) on %s, forward passes in %s, x0 %s%s",
        snakemake.input.model,
        diffusion.describe(),
        diffusion.device,
        options.precision,
        "clipped" if (diffusion.clip_sample if clip_x0 is None else clip_x0) else "not clipped",
        ", sampler steps as CUDA graphs" if options.cuda_graphs and can_capture(diffusion.device) else "",
    )
    return diffusion, options
