"""matplotlib figures: per-timestep loss bars, their comparison across models, the training loss curve."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from .files import atomic_output  # noqa: E402


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


def _save(figure, path: str | os.PathLike) -> None:
    with atomic_output(path) as temporary:
        # A fixed Software tag and no dates keep the PNG byte-identical across runs.
        figure.savefig(temporary, dpi=120, metadata={"Software": None})
    plt.close(figure)
