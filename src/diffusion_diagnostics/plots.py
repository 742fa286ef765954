"""matplotlib figures: per-timestep loss bars, their comparison across models, the training loss curve,
and the classifier-judged sample quality, interpolation smoothness and DDIM fidelity."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from .files import atomic_output  # noqa: E402
from .quality import NEIGHBOUR_METRICS  # noqa: E402


def plot_timestep_loss(rows: list[dict], path: str | os.PathLike) -> None:
    """Bar chart of ε-MSE per bucket with ±1 standard error; rows as in the loss CSV."""
    labels = [f"{int(r['t_start'])}-{int(r['t_end'])}" for r in rows]
    means = [float(r["mse"]) for r in rows]
    errors = [0.0 if math.isnan(float(r["std_error"])) else float(r["std_error"]) for r in rows]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.7 * len(rows)), 4.0), layout="constrained")
    axes.bar(range(len(rows)), means, yerr=errors, capsize=3, color="tab:blue")
    # Labels like "100-199" overlap side by side beyond a handful of buckets: slant them.
    slanted = len(rows) > 6
    axes.set_xticks(
        range(len(rows)), labels, rotation=35 if slanted else 0, ha="right" if slanted else "center"
    )
    axes.set_title("Noise-prediction error vs timestep")
    axes.set_xlabel("timestep t")
    axes.set_ylabel("MSE (ε-prediction error)")
    axes.grid(axis="y", alpha=0.3)
    _save(figure, path)


def plot_timestep_loss_comparison(rows: list[dict], path: str | os.PathLike) -> None:
    """One ε-MSE line per model over the bucket centres, with a ±1 standard-error band.

    ``rows`` as in the comparison CSV: the loss CSV's columns plus ``model``; models keep the order
    of their first row.
    """
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    figure, axes = plt.subplots(figsize=(7.0, 4.0), layout="constrained")
    for model, model_rows in by_model.items():
        centres = [(int(r["t_start"]) + int(r["t_end"])) / 2 for r in model_rows]
        means = [float(r["mse"]) for r in model_rows]
        errors = [0.0 if math.isnan(float(r["std_error"])) else float(r["std_error"]) for r in model_rows]
        (line,) = axes.plot(centres, means, "o-", markersize=3, label=model)
        axes.fill_between(
            centres,
            [m - e for m, e in zip(means, errors, strict=True)],
            [m + e for m, e in zip(means, errors, strict=True)],
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    axes.set_title("Noise-prediction error vs timestep")
    axes.set_xlabel("timestep t")
    axes.set_ylabel("MSE (ε-prediction error)")
    axes.grid(alpha=0.3)
    axes.legend(title="model (±1 SE band)")
    _save(figure, path)


def plot_training_history(rows: list[dict], path: str | os.PathLike) -> None:
    """Training ε-MSE per step (raw and a running mean) and the EMA model's validation ε-MSE."""
    steps = [int(r["step"]) for r in rows]
    train = [float(r["train_loss"]) for r in rows]
    window = max(1, len(train) // 50)
    smooth = [
        sum(train[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
        for i in range(len(train))
    ]
    validated = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"] not in ("", None)]
    figure, axes = plt.subplots(figsize=(7.0, 4.0), layout="constrained")
    axes.plot(steps, train, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
    axes.plot(steps, smooth, color="tab:blue", label=f"train (mean of {window} steps)")
    if validated:
        axes.plot(*zip(*validated, strict=True), "o-", color="tab:orange", label="validation (EMA weights)")
    axes.set_yscale("log")
    axes.set_title("Training loss")
    axes.set_xlabel("step")
    axes.set_ylabel("MSE (ε-prediction error)")
    axes.grid(alpha=0.3)
    axes.legend()
    _save(figure, path)


def _number(value) -> float | None:
    """A CSV cell or a Python value as a float; empty (the held-out reference's distance) is None."""
    return None if value in ("", None) else float(value)


def plot_sample_quality(rows: list[dict], path: str | os.PathLike) -> None:
    """Fréchet distance per image set (log scale), its precision, recall, density and coverage,
    and the predicted-class shares of the samples beside the held-out digits'; rows as
    :func:`quality.sample_quality_rows` returns them (or read back from its CSV)."""
    figure, (distances, neighbours, classes) = plt.subplots(1, 3, figsize=(16.0, 4.2), layout="constrained")
    scored = [r for r in rows if _number(r["frechet_distance"]) is not None]
    _draw_frechet_distances(distances, scored)
    _draw_neighbour_metrics(neighbours, scored)
    _draw_class_shares(classes, rows)
    figure.suptitle("Sample quality judged by the digit classifier")
    _save(figure, path)


def _draw_frechet_distances(axes, scored: list[dict]) -> None:
    """One bar per set measured against the reference; log scale, since noise is far beyond the rest."""
    bars = axes.bar(range(len(scored)), [_number(r["frechet_distance"]) for r in scored], color="tab:blue")
    axes.bar_label(bars, fmt="%.3g", fontsize=8)
    axes.set_xticks(range(len(scored)), [r["set"] for r in scored], rotation=15, ha="right")
    axes.set_yscale("log")
    axes.set_ylabel("Fréchet distance to real held-out")
    axes.set_title("Fréchet distance (classifier features)")
    axes.grid(axis="y", alpha=0.3)


SET_COLORS = {
    "samples": "tab:orange",
    "real train (floor)": "tab:green",
    "uniform noise (ceiling)": "tab:red",
}


def _draw_neighbour_metrics(axes, scored: list[dict]) -> None:
    """A group of bars per k-NN metric, a bar per set: the samples read against the floor beside them."""
    width = 0.8 / max(1, len(scored))
    tallest = 1.0
    for position, row in enumerate(scored):
        values = [_number(row[metric]) for metric in NEIGHBOUR_METRICS]
        tallest = max(tallest, *values)
        offsets = [m - 0.4 + width * (position + 0.5) for m in range(len(NEIGHBOUR_METRICS))]
        bars = axes.bar(offsets, values, width, color=SET_COLORS.get(row["set"]), label=row["set"])
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    # Density is about 1 for samples spread like real digits, and the three shares cannot pass 1.
    axes.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    axes.set_ylim(0, 1.3 * tallest)  # room for the legend above bars of 1
    axes.set_xticks(range(len(NEIGHBOUR_METRICS)), NEIGHBOUR_METRICS)
    axes.set_ylabel("against real held-out")
    axes.set_title("k-NN precision, recall, density, coverage")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, ncols=len(scored), loc="upper center")


def _draw_class_shares(axes, rows: list[dict]) -> None:
    """The samples' predicted-class shares beside the held-out digits': a dropped digit is a hole."""
    by_set = {r["set"]: r for r in rows}
    width = 0.4
    # Shares, not counts: the samples and the held-out set need not be the same size.
    for offset, (name, color) in zip(
        (-width / 2, width / 2), (("samples", "tab:orange"), ("real held-out", "tab:gray")), strict=True
    ):
        if name not in by_set:
            continue
        counts = [float(by_set[name][f"class_{digit}"]) for digit in range(10)]
        total = sum(counts) or 1.0
        axes.bar([d + offset for d in range(10)], [c / total for c in counts], width, color=color, label=name)
    axes.set_xticks(range(10))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("share of images")
    axes.set_title("Predicted classes")
    axes.grid(axis="y", alpha=0.3)
    axes.legend()


INTERPOLATION_METRICS = (
    ("mean_step", "mean step (pixel RMSE)"),
    ("max_over_mean", "largest / mean step"),
    ("on_manifold_rate", "share of clear digits"),
    ("label_changes", "class changes per row"),
)


def plot_interpolation_metrics(rows: list[dict], path: str | os.PathLike) -> None:
    """One panel per path metric: a bar per variant (the mean over its rows), each row a dot.

    ``rows`` as :func:`quality.interpolation_row_metrics` returns them, plus a ``variant`` name;
    variants keep the order of their first row.
    """
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    variants = list(by_variant)
    figure, panels = plt.subplots(
        2, 2, figsize=(max(8.0, 2.0 + 2.2 * len(variants)), 7.0), layout="constrained"
    )
    for axes, (key, label) in zip(panels.flat, INTERPOLATION_METRICS, strict=True):
        for position, variant in enumerate(variants):
            values = [float(r[key]) for r in by_variant[variant]]
            axes.bar(position, sum(values) / len(values), color=f"C{position}", alpha=0.6)
            # Spread the dots evenly across the bar, not randomly, so the figure is reproducible.
            spread = [position + 0.5 * (i / max(1, len(values) - 1) - 0.5) for i in range(len(values))]
            axes.plot(spread, values, "o", color="black", markersize=3)
        slanted = len(variants) > 2
        axes.set_xticks(
            range(len(variants)), variants, rotation=30 if slanted else 0, ha="right" if slanted else "center"
        )
        axes.set_title(label, fontsize=10)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle("Interpolation paths judged by the digit classifier (bar: mean over rows; dots: rows)")
    _save(figure, path)


def plot_ddim_fidelity(rows: list[dict], path: str | os.PathLike) -> None:
    """Error of DDIM with S steps against the S = 1000 decoding of the same noise, and the
    wall time, per S; rows with num_steps, rmse_to_reference, max_error_to_reference and seconds."""
    rows = sorted(rows, key=lambda r: int(r["num_steps"]))
    steps = [int(r["num_steps"]) for r in rows]
    figure, error_axes = plt.subplots(figsize=(7.0, 4.0), layout="constrained")
    lines = error_axes.plot(
        steps, [float(r["rmse_to_reference"]) for r in rows], "o-", color="tab:blue", label="RMSE"
    )
    lines += error_axes.plot(
        steps,
        [float(r["max_error_to_reference"]) for r in rows],
        "s--",
        color="tab:blue",
        alpha=0.5,
        label="max |error|",
    )
    error_axes.set_xscale("log")
    error_axes.set_xticks(steps, [str(s) for s in steps])
    error_axes.minorticks_off()
    error_axes.set_xlabel("DDIM steps S")
    error_axes.set_ylabel("error vs S = 1000 (pixels in [-1, 1])")
    error_axes.grid(alpha=0.3)
    time_axes = error_axes.twinx()
    lines += time_axes.plot(
        steps, [float(r["seconds"]) for r in rows], "^-", color="tab:orange", label="wall time"
    )
    time_axes.set_ylabel("wall time (s)")
    error_axes.legend(lines, [line.get_label() for line in lines], loc="upper center")
    error_axes.set_title("DDIM: fewer steps vs the S = 1000 grid")
    _save(figure, path)


def _save(figure, path: str | os.PathLike) -> None:
    with atomic_output(path) as temporary:
        # A fixed Software tag and no dates keep the PNG byte-identical across runs.
        figure.savefig(temporary, dpi=120, metadata={"Software": None})
    plt.close(figure)
