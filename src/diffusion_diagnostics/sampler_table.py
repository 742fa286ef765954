"""Sample quality against cost for several samplers on one model: every cell (a :class:`Sampler` at a
number of steps and a spacing) decodes the same seeded starting noises, its network evaluations
counted, scored by the judge against the held-out digits as sample_quality scores them, timed, and,
for the deterministic samplers, compared with the same noise solved with many steps (how far from
the ODE's own answer, whatever the judge thinks). With several seeds every cell is repeated with new
noise and its scores given as mean and spread; real training digits drawn as many times give the
floor, and its spread, the noise a difference must exceed to mean anything.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product

import torch

from .decoding import OURS, Sampler, decode
from .diffusion import DiffusionProcess
from .errors import DiagnosticsError
from .process_config import TIMESTEP_SPACINGS
from .quality import DISTANCES, Judgement, class_histogram, confidence_stats, distances_to
from .solvers import CountingNetwork

log = logging.getLogger(__name__)

# The scores given as mean and spread (their standard deviation over the seeds, ``<score>_spread``).
SCORES = (
    "frechet_distance",
    "kid",
    "precision",
    "recall",
    "density",
    "coverage",
    "confident_share",
    "ode_rmse",
)
SAMPLER_COLUMNS = [
    "sampler",
    "spacing",
    "steps",
    "nfe",
    "seeds",
    "seconds_per_sample",
    *DISTANCES,
    "mean_max_softmax",
    "confident_share",
    "ode_rmse",
    *(f"{score}_spread" for score in SCORES),
    *(f"class_{digit}" for digit in range(10)),
]
FLOOR = "floor (training digits)"  # the floor's row in the table, in the sampler column
FLOOR_DRAWS = 5  # sets of real training digits whose spread is the floor's noise
PREVIEW = 8  # the noises every cell shows in the grid


def available_samplers(samplers: list[str]) -> list[str]:
    """``samplers`` as they can run here: without diffusers (the optional extra), ours alone, and
    one log line saying how to get the rest."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        ours = [sampler for sampler in samplers if sampler in OURS]
        left = [sampler for sampler in samplers if sampler not in OURS]
        if left:
            log.warning("%s need diffusers: pip install -e \".[diffusers]\"; the table has %s only",
                        ", ".join(left), ", ".join(ours) or "nothing")  # fmt: skip
        if not ours:
            raise DiagnosticsError(
                f"the samplers {', '.join(left)} need diffusers, which is not installed: "
                'pip install -e ".[diffusers]", or name ddim among samplers.samplers'
            ) from None
        return ours
    return list(samplers)


def has_spacing(diffusion: DiffusionProcess, kind: str, spacing: str) -> bool:
    """Whether sampler ``kind`` visits its timesteps by ``spacing`` (DDPM visits all: only once)."""
    if kind in OURS:
        return spacing in TIMESTEP_SPACINGS
    from .solvers import SIGMA_SPACINGS, SPACINGS, build_scheduler

    if spacing in SPACINGS:
        return True
    if spacing not in SIGMA_SPACINGS:
        return False
    try:
        build_scheduler(kind, diffusion.config, spacing)
    except DiagnosticsError as error:
        if "noise levels" in str(error):
            return False
        raise
    return True


def sampler_cells(
    diffusion: DiffusionProcess, kinds: list[str], steps: list[int], spacings: list[str]
) -> list[Sampler]:
    """Every sampler at every step count and spacing it has (unclipped, η = 0); DDPM, which takes
    all T steps, once. A spacing no sampler has, or a sampler with none of the spacings, is one
    error line; the pairs left out are said in one log line."""
    if not (kinds and steps and spacings):
        raise DiagnosticsError(
            "the sampler table has no cells; name at least one sampler, step count and spacing"
        )
    pairs = [
        (kind, spacing) for kind, spacing in product(kinds, spacings) if has_spacing(diffusion, kind, spacing)
    ]
    for spacing in spacings:
        if not any(s == spacing for _, s in pairs):
            raise DiagnosticsError(
                f"no sampler of {', '.join(kinds)} has the spacing '{spacing}' (spacings: "
                "trailing, leading, linspace; karras, lu_lambdas for the solvers that have them)"
            )
    for kind in kinds:
        if not any(k == kind for k, _ in pairs):
            raise DiagnosticsError(f"sampler '{kind}' has none of the spacings {', '.join(spacings)}")
    left_out = [
        f"{kind} {spacing}" for kind, spacing in product(kinds, spacings) if (kind, spacing) not in pairs
    ]
    if left_out:
        log.info("left out, as those samplers lack the spacing: %s", ", ".join(left_out))
    cells = []
    for kind, spacing in pairs:
        if kind == "ddpm":
            if not any(cell.kind == "ddpm" for cell in cells):
                cells.append(Sampler("ddpm", diffusion.timesteps, spacing=spacing))
            continue
        cells.extend(Sampler(kind, count, spacing=spacing) for count in steps)
    for cell in cells:  # every step count that cannot run fails before any cell runs
        cell.check(diffusion)
    return cells


def seeded_noises(n: int, shape: tuple[int, ...], seed: int, seeds: int) -> list[torch.Tensor]:
    """``seeds`` sets of ``n`` starting noises, from CPU generators seeded seed, seed + 1, ...: the
    same on every machine and device."""
    return [
        torch.randn((n, *shape), generator=torch.Generator().manual_seed(s))
        for s in range(seed, seed + seeds)
    ]


def floor_sets(digits: torch.Tensor, n: int, seed: int, draws: int = FLOOR_DRAWS) -> list[torch.Tensor]:
    """``draws`` random sets of ``n`` real digits (as many as a cell's samples): the floor."""
    generator = torch.Generator().manual_seed(seed)
    return [digits[torch.randperm(len(digits), generator=generator)[:n]] for _ in range(draws)]


@dataclass
class SamplerTable:
    """The table's rows (the floor's first), the first PREVIEW images of every cell from the last
    seed's noise (the same noises for every cell; by the cell's label and NFE), and the
    recommendation (None without a finite distance)."""

    rows: list[dict]
    previews: dict[str, torch.Tensor]
    recommendation: dict | None


def cell_label(row: dict) -> str:
    return f"{row['sampler']} ({row['spacing']})"


def sampler_table(
    diffusion: DiffusionProcess,
    judge: Callable[[torch.Tensor], Judgement],
    reference: Judgement,
    floors: list[Judgement],
    cells: list[Sampler],
    noises: list[torch.Tensor],
    reference_steps: int = 200,
    batch_size: int = 250,
    seed: int = 0,
    nearest_k: int = 5,
) -> SamplerTable:
    """One row per cell, its scores the mean over ``noises`` (one seed's starting noise each) with
    their spread: its counted NFE, seconds per sample, the judge's scores against ``reference``
    (the held-out digits' judgement) and, for a deterministic sampler, the RMSE to the same sampler
    with ``reference_steps`` steps from the same noise. ``floors``: real digits, each set as many
    as a seed's samples, judged: the floor's row. ``judge`` takes the model's images (and brings
    them to the digits' size where they differ)."""
    if not cells:
        raise DiagnosticsError("the sampler table has no cells; name at least one sampler and one step count")
    floor = _mean_row(
        {"sampler": FLOOR, "spacing": "", "steps": None, "nfe": None},
        [_scores(reference, judged, nearest_k, seed) for judged in floors],
    )
    answers: dict[tuple[Sampler, int], torch.Tensor] = {}
    rows, previews = [floor], {}
    for cell in cells:
        runs, nfe, seconds = [], 0, 0.0
        for index, noise in enumerate(noises):
            counting = CountingNetwork(diffusion.model)
            counted = diffusion.rebuilt(counting)
            started = time.perf_counter()
            images = _decode(counted, cell, noise, batch_size, seed + index)
            seconds += time.perf_counter() - started
            nfe = counting.calls // len(noise.split(batch_size))  # each batch makes as many
            scores = _scores(reference, judge(images), nearest_k, seed)
            scores["ode_rmse"] = None
            if cell.deterministic:
                key = (dataclasses.replace(cell, steps=reference_steps), index)
                if key not in answers:
                    answers[key] = _decode(diffusion, key[0], noise, batch_size, seed + index)
                scores["ode_rmse"] = float((images - answers[key]).pow(2).mean().sqrt())
            runs.append(scores)
        head = {"sampler": cell.kind, "spacing": _spacing(cell), "steps": cell.steps, "nfe": nfe}
        previews[f"{cell_label(head)}, {nfe} NFE"] = images[:PREVIEW]  # the last seed's: any would do
        head["seconds_per_sample"] = seconds / sum(len(noise) for noise in noises)
        rows.append(_mean_row(head, runs))
        done = rows[-1]
        log.info(
            "%s, %d steps: %d NFE, Fréchet distance %.4g, %.3g s per sample",
            *(cell_label(done), cell.steps, nfe, done["frechet_distance"], done["seconds_per_sample"]),
        )
    return SamplerTable(rows, previews, recommend(rows))


def _spacing(cell: Sampler) -> str:
    return "all" if cell.kind == "ddpm" else cell.timestep_spacing


def _decode(diffusion: DiffusionProcess, sampler: Sampler, noise: torch.Tensor, batch_size: int, seed: int):
    """Decoded unclipped; a stochastic sampler's step noise seeded with ``seed``."""
    generator = None if sampler.deterministic else torch.Generator(noise.device).manual_seed(seed)
    return decode(diffusion, sampler, noise, batch_size, generator, progress=False)


def _scores(reference: Judgement, judged: Judgement, nearest_k: int, seed: int) -> dict:
    return {
        **distances_to(reference, judged, nearest_k, seed),
        **confidence_stats(judged.probabilities),
        **{f"class_{digit}": count for digit, count in enumerate(class_histogram(judged.probabilities))},
    }


def _mean_row(head: dict, runs: list[dict]) -> dict:
    """``head`` with every score's mean over ``runs`` and, for SCORES, its spread (None from one run)."""
    row = {**head, "seeds": len(runs)}
    for key in runs[0]:
        values = [run[key] for run in runs if run[key] is not None]
        row[key] = statistics.fmean(values) if values else None
    for score in SCORES:
        values = [run[score] for run in runs if run.get(score) is not None]
        row[f"{score}_spread"] = statistics.stdev(values) if len(values) > 1 else None
    return {column: row.get(column) for column in SAMPLER_COLUMNS}


def recommend(rows: list[dict]) -> dict | None:
    """The fewest NFE whose Fréchet distance is within the noise of the best cell's: the noise the
    larger of the best cell's spread over seeds and the floor's spread (how much the distance of
    real digits moves from one draw to the next). Rows as :func:`sampler_table` gives them (or
    read back from its CSV); None where no cell has a finite distance."""
    floor = next((row for row in rows if row["sampler"] == FLOOR), None)
    cells = [row for row in rows if row["sampler"] != FLOOR and _finite(row["frechet_distance"])]
    if not cells:
        return None
    best = min(cells, key=lambda row: float(row["frechet_distance"]))
    spreads = [best["frechet_distance_spread"], floor and floor["frechet_distance_spread"]]
    noise = max((float(spread) for spread in spreads if _finite(spread)), default=0.0)
    within = [
        row for row in cells if float(row["frechet_distance"]) <= float(best["frechet_distance"]) + noise
    ]
    pick = min(within, key=lambda row: (int(row["nfe"]), float(row["frechet_distance"])))
    return {
        "sampler": pick["sampler"],
        "spacing": pick["spacing"],
        "steps": int(pick["steps"]),
        "nfe": int(pick["nfe"]),
        "frechet_distance": float(pick["frechet_distance"]),
        "best": {key: best[key] for key in ("sampler", "spacing", "steps", "nfe", "frechet_distance")},
        "noise": noise,
        "sentence": (
            f"{pick['sampler']} ({pick['spacing']}) at {int(pick['nfe'])} NFE: Fréchet distance "
            f"{float(pick['frechet_distance']):.3g}, within the noise (±{noise:.2g}) of the best cell, "
            f"{best['sampler']} ({best['spacing']}) at {int(best['nfe'])} NFE "
            f"({float(best['frechet_distance']):.3g})"
        ),
    }


def empirical_order(points: list[tuple[float, float]]) -> float:
    """A solver's empirical order of convergence from (NFE, error) points: minus the least-squares
    slope of log error against log NFE."""
    x, y = [math.log(n) for n, _ in points], [math.log(e) for _, e in points]
    mean_x, mean_y = sum(x) / len(x), sum(y) / len(y)
    covariance = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y, strict=True))
    return -covariance / sum((a - mean_x) ** 2 for a in x)


def _finite(value) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number == number and abs(number) != float("inf")
