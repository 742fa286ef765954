"""Replaying a sampler step as a CUDA graph: one launch per step instead of one per kernel.

At the workflow's sizes (72 images of 28 × 28) a forward pass of the default network is a few
hundred small kernels, each shorter on a GPU than the Python and launch work that issues it, so an
eager sampling loop leaves the GPU idle most of the time. Captured once as a CUDA graph, a whole
step (network, sampler arithmetic, noise) is replayed with a single launch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import DiagnosticsError
from .runtime import progress_bar

# Steps run eagerly before capture, on a side stream as CUDA graphs require: the first calls
# choose kernels and fill the allocator's caches, which a capture must not do. They are real steps.
WARMUP_STEPS = 2


def can_capture(device: torch.device) -> bool:
    """Whether sampler steps on this device can be replayed as CUDA graphs."""
    return device.type == "cuda"


def replay_steps(
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    num_steps: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str = "",
) -> torch.Tensor:
    """``x = step(x, i)`` for i = 0 … num_steps - 1 on a CUDA device, replaying one captured graph.

    ``step`` gets ``i`` as a one-element int64 tensor on x's device (the graph reads its value at
    each replay), must look up everything that changes between steps from it on the device
    (``diffusion.at_step``), and must never read a value back to the host: a capture cannot sync.
    Its random draws come from ``generator`` (or the default CUDA generator), which is registered
    with the graph so that each replay draws fresh numbers and advances it.
    """
    device = x.device
    index = torch.zeros(1, dtype=torch.long, device=device)
    state = x.clone()  # the graph reads the step's input from here and writes its output back

    def one_step() -> None:
        state.copy_(step(state, index))

    bar = progress_bar(total=num_steps, desc=desc, disable=not progress)
    warmup = min(WARMUP_STEPS, num_steps)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for i in range(warmup):
            index.fill_(i)
            one_step()
            bar.update()
    torch.cuda.current_stream(device).wait_stream(side)
    if warmup < num_steps:
        graph = torch.cuda.CUDAGraph()
        if generator is not None:
            if not hasattr(graph, "register_generator_state"):
                raise DiagnosticsError(
                    f"CUDA graphs with a seeded generator need torch >= 2.4 (this is {torch.__version__}); "
                    "upgrade torch or turn CUDA graphs off"
                )
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph):
            one_step()
        for i in range(warmup, num_steps):
            index.fill_(i)
            graph.replay()
            bar.update()
    bar.close()
    return state
