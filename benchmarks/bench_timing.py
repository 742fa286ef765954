"""Timing: the cases, their interleaved round robin, paired short runs, and the machine they ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Case:
    """One piece of timed work: ``run`` does it once and returns what it made."""

    name: str  # its key in the JSON
    run: Callable[[], object] = field(compare=False, repr=False)
    # Run once untimed before the round robin: its first call builds oneDNN primitives and
    # allocator pools that the cases timed first would otherwise pay for.
    warm_up: bool = False


@dataclass
class Timings:
    """Seconds of every case in every repetition, and what each case's last run returned."""

    seconds: dict[str, list[float]]
    outputs: dict[str, object]
    other_processes: dict | None

    def median(self, case: Case) -> float:
        return statistics.median(self.seconds[case.name])

    def all(self, case: Case) -> list[float]:
        return self.seconds[case.name]

    def output(self, case: Case):
        return self.outputs[case.name]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], object], device: torch.device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    output = run()
    synchronize(device)
    return time.perf_counter() - start, output


def round_robin(cases: list[Case], reps: int, device: torch.device) -> Timings:
    """Every case once, then every case again, ``reps`` times, the starting case rotated each time:
    a drift of the machine's speed then spreads over all cases instead of landing on a few."""
    for case in cases:
        if case.warm_up:
            case.run()
    seconds = {case.name: [] for case in cases}
    outputs = {}
    busy, own, wall = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    for rep in range(reps):
        shift = rep % len(cases)
        for case in cases[shift:] + cases[:shift]:
            elapsed, outputs[case.name] = timed(case.run, device)
            seconds[case.name].append(elapsed)
        done = ", ".join(f"{name} {values[-1]:.2f}s" for name, values in seconds.items())
        print(f"repetition {rep + 1}/{reps}: {done}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - wall
    others = None
    if busy is not None:
        cpu = max(0.0, busy_cpu_seconds() - busy - (own_cpu_seconds() - own))
        others = {"cpu_seconds": cpu, "wall_seconds": wall}
    return Timings(seconds, outputs, others)


def paired_seconds(runs: dict[str, Callable], pairs: int, device: torch.device) -> dict[str, list[float]]:
    """Each run's seconds, the runs back to back ``pairs`` times (after one untimed call each), the
    order alternating: the i-th times of two runs lie seconds apart, so their ratio leaves out the
    machine's drift over minutes (5-10 % here)."""
    for run in runs.values():
        run()
    seconds = {name: [] for name in runs}
    for pair in range(pairs):
        for name in list(runs)[:: 1 if pair % 2 == 0 else -1]:
            seconds[name].append(timed(runs[name], device)[0])
    return seconds


def paired_ratios(
    runs: dict[str, Callable], floor: Callable, pairs: int, device: torch.device
) -> dict[str, list[float]]:
    """Each run's time over the floor's, pair by pair (:func:`paired_seconds`)."""
    seconds = paired_seconds({"floor": floor, **runs}, pairs, device)
    return {
        name: [run / floor for run, floor in zip(seconds[name], seconds["floor"], strict=True)]
        for name in runs
    }


def flops_of(function: Callable) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        function()
    return counter.get_total_flops()


# --- whether the machine was shared --------------------------------------------------------------


def busy_cpu_seconds() -> float | None:
    """CPU time used by the whole machine so far (Linux), to tell whether others shared it."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    return None


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# --- the machine ---------------------------------------------------------------------------------


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
