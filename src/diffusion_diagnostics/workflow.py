"""What every script under scripts/ does around its rule's work: log, threads, error line."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

import torch

from .checkpoint import load_checkpoint
from .diffusion import DiffusionProcess
from .errors import DiagnosticsError
from .graphs import can_capture
from .runtime import autocast_dtype, keep_freed_memory, resolve_device


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


def load_sampling_model(snakemake) -> DiffusionProcess:
    """The rule's model (``input.model``) as every sampling rule uses it: on the rule's device
    (``params.device``), its forward passes in the rule's precision (``params.precision``), its
    sampler steps replayed as CUDA graphs where the config asks and the device is a GPU. The last
    changes no result, so it is read from the config, not a rule parameter that would rerun jobs."""
    diffusion, _ = load_checkpoint(snakemake.input.model, resolve_device(snakemake.params.device))
    diffusion.autocast_dtype = autocast_dtype(snakemake.params.precision)
    diffusion.cuda_graphs = snakemake.config["cuda_graphs"]
    logging.info(
        "model %s on %s, forward passes in %s%s",
        snakemake.input.model,
        diffusion.device,
        snakemake.params.precision,
        ", sampler steps as CUDA graphs" if diffusion.cuda_graphs and can_capture(diffusion.device) else "",
    )
    return diffusion
