"""matplotlib figures: per-timestep loss bars, the errors and bound against log-SNR and their comparison
across models, the training loss curve, a training run's trajectory (its errors per bucket as a
heatmap, its bound), and the classifier-judged sample quality, interpolation smoothness and DDIM
fidelity. Each ``*_figure`` builds its figure (which tests read back); each
``plot_*`` saves one as the rule's PNG."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .files import atomic_output  # noqa: E402
from .quality import NEIGHBOUR_METRICS  # noqa: E402
from .sampler_table import FLOOR, empirical_order  # noqa: E402


def timestep_loss_figure(rows: list[dict]) -> Figure:
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
    return figure


ERRORS = (("mse", "std_error", "ε"), ("x0_mse", "x0_std_error", "x̂₀"), ("v_mse", "v_std_error", "v"))
OBJECTIVE_ERROR = {"epsilon": "mse", "sample": "x0_mse", "v_prediction": "v_mse"}
LOG_SNR_LABEL = "log-SNR λ = log(ᾱ / (1 - ᾱ)), t increasing →"


def _bucket_span(rows: list[dict]) -> tuple[list[float], list[float]]:
    """Each bucket's log-SNR midpoint and half its extent: where it sits on the λ axis."""
    starts = [float(r["log_snr_start"]) for r in rows]
    ends = [float(r["log_snr_end"]) for r in rows]
    return [(a + b) / 2 for a, b in zip(starts, ends, strict=True)], [
        (a - b) / 2 for a, b in zip(starts, ends, strict=True)
    ]


def _std_errors(rows: list[dict], key: str) -> list[float]:
    return [0.0 if math.isnan(float(r[key])) else float(r[key]) for r in rows]


def _log_snr_axes(axes, ylabel: str) -> None:
    axes.set_yscale("log")
    # High λ (t = 0, almost clean) on the left, as t runs in the bar chart.
    axes.invert_xaxis()
    axes.set_xlabel(LOG_SNR_LABEL)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3, which="both")


def timestep_loss_snr_figure(rows: list[dict], bound: dict) -> Figure:
    """The ε-, x̂₀- and v-MSE per bucket (the model's objective drawn bold), and the bucket's mean
    bound term L_t, each against log-SNR on log axes, ±1 standard error; rows as in the loss CSV,
    ``bound`` as in nll.json. Horizontal bars: the bucket's span of λ."""
    centres, spans = _bucket_span(rows)
    objective = OBJECTIVE_ERROR[rows[0]["objective"]]
    figure, (errors, terms) = plt.subplots(1, 2, figsize=(12.0, 4.4), layout="constrained")
    for color, (key, std_key, name) in enumerate(ERRORS):
        trained = key == objective
        errors.errorbar(
            centres,
            [float(r[key]) for r in rows],
            xerr=spans,
            yerr=_std_errors(rows, std_key),
            fmt="o-",
            color=f"C{color}",
            linewidth=2.5 if trained else 1.0,
            markersize=4,
            capsize=2,
            label=f"{name}-MSE" + (" (training objective)" if trained else ""),
        )
    _log_snr_axes(errors, "MSE")
    errors.set_title("Prediction errors vs log-SNR")
    errors.legend()
    terms.errorbar(
        centres,
        [float(r["vb_bpd"]) for r in rows],
        xerr=spans,
        yerr=_std_errors(rows, "vb_std_error"),
        fmt="o-",
        color="C3",
        markersize=4,
        capsize=2,
        label="mean L_t of the bucket (bucket 0 holds L_0)",
    )
    _log_snr_axes(terms, "bits per dimension per timestep")
    terms.set_title(
        f"Bound {bound['total_bpd']:.3f} ± {bound['std_error']:.3f} bits/dim: "
        f"L_0 {bound['decoder_bpd']:.3f}, Σ L_t {bound['kl_bpd']:.3f}, L_T {bound['prior_bpd']:.2g}",
        fontsize=10,
    )
    terms.legend()
    figure.suptitle(_images_measured(bound))
    return figure


def _images_measured(bound: dict) -> str:
    """Which images the numbers are of, as nll.json says (the split only when the workflow wrote it)."""
    where = f" of the {bound['split']} split" if "split" in bound else ""
    source = f" ({bound['data_source']})" if "data_source" in bound else ""
    return f"{bound['num_images']:,} images{where}{source}, T = {bound['timesteps']}"


def timestep_loss_comparison_figure(rows: list[dict], bounds: dict[str, dict] | None = None) -> Figure:
    """Every model's ε-MSE and mean bound term per bucket against log-SNR, on log axes with a ±1
    standard-error band, so that models with different schedules or T line up.

    ``rows`` as in the comparison CSV: the loss CSV's columns plus ``model``; models keep the order
    of their first row. ``bounds``: each model's nll.json, whose total goes in the legend.
    """
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    figure, (errors, terms) = plt.subplots(1, 2, figsize=(12.0, 4.4), layout="constrained")
    for model, model_rows in by_model.items():
        centres, _ = _bucket_span(model_rows)
        label = model
        if bounds and model in bounds:
            label += f" ({bounds[model]['total_bpd']:.3f} ± {bounds[model]['std_error']:.3f} bits/dim)"
        for axes, key, std_key in ((errors, "mse", "std_error"), (terms, "vb_bpd", "vb_std_error")):
            means = [float(r[key]) for r in model_rows]
            spread = _std_errors(model_rows, std_key)
            (line,) = axes.plot(centres, means, "o-", markersize=3, label=label)
            axes.fill_between(
                centres,
                [m - e for m, e in zip(means, spread, strict=True)],
                [m + e for m, e in zip(means, spread, strict=True)],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    _log_snr_axes(errors, "MSE (ε-prediction error)")
    errors.set_title("Noise-prediction error vs log-SNR")
    errors.legend(title="model (±1 SE band)")
    _log_snr_axes(terms, "bits per dimension per timestep")
    terms.set_title("Mean bound term L_t of each bucket vs log-SNR")
    terms.legend(title="model (total bound)", fontsize=8)
    return figure


def training_history_figure(rows: list[dict]) -> Figure:
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
    return figure


def _number(value) -> float | None:
    """A CSV cell or a Python value as a float; empty (the held-out reference's distance) is None."""
    return None if value in ("", None) else float(value)


def sample_quality_figure(rows: list[dict]) -> Figure:
    """Fréchet distance per image set (log scale), its precision, recall, density and coverage,
    and the predicted-class shares of the samples beside the held-out digits'; rows as
    :func:`quality.sample_quality_rows` returns them (or read back from its CSV)."""
    figure, (distances, neighbours, classes) = plt.subplots(1, 3, figsize=(16.0, 4.2), layout="constrained")
    scored = [r for r in rows if _number(r["frechet_distance"]) is not None]
    _draw_frechet_distances(distances, scored)
    _draw_neighbour_metrics(neighbours, scored)
    _draw_class_shares(classes, rows)
    figure.suptitle("Sample quality judged by the digit classifier")
    return figure


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


def interpolation_metrics_figure(rows: list[dict]) -> Figure:
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
    return figure


def ddim_fidelity_figure(rows: list[dict]) -> Figure:
    """Error of DDIM with S steps against the grid with the most steps decoded the same way, for
    x̂_0 clipped and not, and the wall time, per S; rows as fidelity.ddim_step_sweep gives them."""
    figure, error_axes = plt.subplots(figsize=(7.0, 4.0), layout="constrained")
    time_axes = error_axes.twinx()
    lines = []
    for clip, color in ((False, "tab:blue"), (True, "tab:red")):
        chosen = sorted((r for r in rows if _truth(r["clip_x0"]) == clip), key=lambda r: int(r["num_steps"]))
        if not chosen:
            continue
        steps = [int(r["num_steps"]) for r in chosen]
        label = "x0 clipped" if clip else "not clipped"
        # The reference's own zero cannot be drawn on a log axis: fewer steps only.
        fewer = [r for r in chosen if int(r["num_steps"]) < max(steps)]
        lines += error_axes.plot(
            [int(r["num_steps"]) for r in fewer],
            [float(r["rmse_to_reference"]) for r in fewer],
            "o-",
            color=color,
            label=f"RMSE, {label}",
        )
        lines += time_axes.plot(
            steps,
            [float(r["seconds"]) for r in chosen],
            "^:",
            color=color,
            alpha=0.5,
            label=f"wall time, {label}",
        )
    all_steps = sorted({int(r["num_steps"]) for r in rows})
    reference = max(all_steps)
    error_axes.set_xscale("log")
    error_axes.set_yscale("log")
    error_axes.set_xticks(all_steps, [str(s) for s in all_steps])
    error_axes.minorticks_off()
    error_axes.set_xlabel("DDIM steps S")
    error_axes.set_ylabel(f"RMSE to S = {reference}, same clipping (pixels in [-1, 1])")
    error_axes.grid(alpha=0.3)
    time_axes.set_ylabel("wall time (s)")
    error_axes.legend(lines, [line.get_label() for line in lines], loc="best", fontsize="small")
    error_axes.set_title(f"DDIM: fewer steps vs the S = {reference} grid")
    return figure


def _by_weights(rows: list[dict]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for row in rows:
        runs.setdefault(row["weights"], []).append(row)
    return runs


def _bucket_label(row: dict, with_log_snr: bool = False) -> str:
    label = f"t {row['t_start']}-{row['t_end']}"
    if with_log_snr:
        label += f" (λ {float(row['log_snr_start']):.1f} … {float(row['log_snr_end']):.1f})"
    return label


def trajectory_ratios(rows: list[dict]) -> tuple[list[int], list[dict], list[list[float]]]:
    """From trajectory.csv's rows of one set of weights: the steps, one row per bucket (its t and
    log-SNR range), and log10 of each bucket's ε-MSE at each step over its ε-MSE at the last step
    (NaN where non-finite): what the heatmap draws."""
    steps = sorted({int(r["step"]) for r in rows})
    error = {(int(r["step"]), int(r["bucket"])): float(r["eps_mse"]) for r in rows}
    buckets = sorted({int(r["bucket"]): r for r in rows}.items())
    ratios = []
    for bucket, _ in buckets:
        last = error[steps[-1], bucket]
        ratios.append(
            [
                math.log10(error[step, bucket] / last)
                if math.isfinite(error[step, bucket])
                and math.isfinite(last)
                and error[step, bucket] > 0 < last
                else math.nan
                for step in steps
            ]
        )
    return steps, [row for _, row in buckets], ratios


# The heatmap's colours reach the ratio this share of its cells stay within, and saturate beyond:
# else the first checkpoints, a thousand times the last one's error, leave the rest all white.
HEATMAP_REACH_QUANTILE = 0.9


def trajectory_heatmap_figure(rows: list[dict]) -> Figure:
    """Checkpoint step (x) by bucket of t (y, labelled with its log-SNR), coloured by the bucket's
    ε-MSE relative to the last checkpoint's on a log scale diverging at 1: a stage learned late
    stays red long, one that gets worse turns blue before the end; black is non-finite. The scale
    reaches HEATMAP_REACH_QUANTILE of the cells and saturates beyond. One panel per set of weights
    (EMA, online)."""
    runs = _by_weights(rows)
    figure, panels = plt.subplots(
        1, len(runs), figsize=(4.0 + 4.5 * len(runs), 4.5), layout="constrained", squeeze=False
    )
    for axes, (weights, run) in zip(panels[0], runs.items(), strict=True):
        steps, buckets, ratios = trajectory_ratios(run)
        finite = sorted(abs(value) for line in ratios for value in line if math.isfinite(value))
        reach = max(finite[int(HEATMAP_REACH_QUANTILE * (len(finite) - 1))] if finite else 0.0, 0.05)
        colours = plt.get_cmap("RdBu_r").with_extremes(bad="black")
        image = axes.imshow(
            ratios,
            aspect="auto",
            cmap=colours,
            norm=TwoSlopeNorm(0.0, -reach, reach),
            interpolation="nearest",
        )
        shown = range(0, len(steps), max(1, len(steps) // 10))
        axes.set_xticks(list(shown), [str(steps[i]) for i in shown], rotation=35, ha="right")
        axes.set_yticks(range(len(buckets)), [_bucket_label(b, with_log_snr=True) for b in buckets])
        axes.set_xlabel("training step")
        axes.set_title(f"ε-MSE ÷ the last checkpoint's ({weights} weights)")
        bar = figure.colorbar(
            image, ax=axes, extend="both", format=FuncFormatter(lambda value, _: f"× {10**value:.3g}")
        )
        bar.set_label("ε-MSE ÷ the last checkpoint's (log scale)")
    return figure


def trajectory_bound_figure(rows: list[dict], bounds: list[dict]) -> Figure:
    """Each checkpoint's bound (bits/dim, ±1 standard error) against its step, split into its
    buckets' shares (stacked) and the prior; rows as in trajectory.csv, bounds as in bound.csv."""
    runs, bound_runs = _by_weights(rows), _by_weights(bounds)
    figure, panels = plt.subplots(
        1, len(runs), figsize=(3.0 + 4.5 * len(runs), 4.0), layout="constrained", squeeze=False
    )
    for axes, (weights, run) in zip(panels[0], runs.items(), strict=True):
        steps = sorted({int(r["step"]) for r in run})
        totals = sorted(bound_runs[weights], key=lambda r: int(r["step"]))
        shares = {}
        for row in run:
            width = int(row["t_end"]) - int(row["t_start"]) + 1
            shares.setdefault(int(row["bucket"]), {})[int(row["step"])] = float(row["vb_bpd"]) * width
        stacked = [[shares[b][step] for step in steps] for b in sorted(shares)]
        buckets = sorted({int(r["bucket"]): r for r in run}.items())
        labels = [_bucket_label(row) for _, row in buckets]
        prior = [float(r["prior_bpd"]) for r in totals]
        # A colour per bucket from t = 0 to T (more buckets than a colour cycle has), the prior grey.
        colours = [
            *plt.get_cmap("viridis")([i / max(1, len(stacked) - 1) for i in range(len(stacked))]),
            "grey",
        ]
        axes.stackplot(steps, *stacked, prior, labels=[*labels, "prior L_T"], colors=colours, alpha=0.7)
        axes.errorbar(
            steps,
            [float(r["total_bpd"]) for r in totals],
            yerr=_std_errors(totals, "std_error"),
            color="black",
            marker="o",
            capsize=3,
            label="total bound",
        )
        axes.set_xlabel("training step")
        axes.set_ylabel("bits per dimension")
        axes.set_title(f"Variational bound ({weights} weights)")
        axes.legend(fontsize="x-small", loc="upper right")
        axes.grid(alpha=0.3)
    return figure


def sampler_table_figure(rows: list[dict], recommendation: dict | None = None) -> Figure:
    """The sampler table: Fréchet distance and KID against counted network evaluations (log x), a
    line per sampler and spacing (error bars its spread over seeds), the floor's mean ± spread as a
    grey band; and each deterministic sampler's RMSE to its many-step answer, log-log, with the
    slope fitted through its points in the legend (its empirical order). The recommendation's
    sentence is the title. Rows as sampler_table gives them (or read back from its CSV)."""
    figure, (frechet, kid, ode) = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained")
    _draw_sampler_distances(frechet, rows, "frechet_distance")
    _draw_sampler_distances(kid, rows, "kid")
    for label, line in _sampler_lines(rows).items():
        errors = [(int(r["nfe"]), _number(r["ode_rmse"])) for r in line]
        errors = [(n, e) for n, e in errors if e is not None and e > 0]
        if len(errors) >= 2:
            ode.plot(
                *zip(*errors, strict=True), marker="o", label=f"{label}: order {empirical_order(errors):.2f}"
            )
    for axes, title in (
        (frechet, "Fréchet distance to held-out digits"),
        (kid, "KID to held-out digits"),
        (ode, "RMSE to the same sampler's many-step answer"),
    ):
        axes.set_xscale("log")
        axes.set_xlim(*_nfe_limits(rows))
        axes.set_xlabel("network evaluations (counted)")
        axes.set_title(title)
        axes.grid(alpha=0.3, which="both")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="x-small")
    frechet.set_yscale("log")
    ode.set_yscale("log")
    if recommendation:
        figure.suptitle(
            f"Fewest NFE within the noise of the best: {recommendation['sentence']}", fontsize="medium"
        )
    return figure


def _nfe_limits(rows: list[dict]) -> tuple[float, float]:
    """The NFE axis's range, set from the rows: a log axis autoscaled on one NFE alone collapses."""
    nfe = [int(row["nfe"]) for row in rows if row["sampler"] != FLOOR] or [1]
    return min(nfe) / 1.5, max(nfe) * 1.5


def _sampler_lines(rows: list[dict]) -> dict[str, list[dict]]:
    """The sampler rows (not the floor), a line per sampler and spacing, by NFE."""
    lines: dict[str, list[dict]] = {}
    for row in rows:
        if row["sampler"] != FLOOR:
            lines.setdefault(f"{row['sampler']} ({row['spacing']})", []).append(row)
    return {label: sorted(line, key=lambda r: int(r["nfe"])) for label, line in lines.items()}


def _draw_sampler_distances(axes, rows: list[dict], key: str, label_prefix: str = "") -> None:
    """``key`` against NFE, a line per sampler with its spread over seeds as error bars, and the
    floor's mean ± spread as a grey band."""
    for label, line in _sampler_lines(rows).items():
        nfe = [int(r["nfe"]) for r in line]
        spread = [_number(r[f"{key}_spread"]) or 0.0 for r in line]
        values = [_number(r[key]) for r in line]
        axes.errorbar(nfe, values, yerr=spread, marker="o", capsize=3, label=f"{label_prefix}{label}")
    floor = next((row for row in rows if row["sampler"] == FLOOR), None)
    if floor is not None and _number(floor[key]) is not None:
        middle, spread = _number(floor[key]), _number(floor[f"{key}_spread"]) or 0.0
        axes.axhspan(middle - spread, middle + spread, color="0.8", alpha=0.6, label="floor ± spread")
        axes.axhline(middle, color="0.5", linewidth=0.8)


def sampler_grid_figure(previews: dict) -> Figure:
    """The same noises decoded by every cell of the sampler table: a row per cell (its label on the
    left), images ``(N, 1, H, W)`` in [-1, 1] side by side."""
    labels = list(previews)
    # Each cell's images (N, 1, H, W) side by side as one strip (H, N * W); the strips stacked.
    strips = [np.concatenate(list(previews[label].clamp(-1, 1).mean(1).numpy()), axis=1) for label in labels]
    height, width = strips[0].shape
    figure, axes = plt.subplots(
        figsize=(2 + width / 28 * 0.6, 0.6 + len(strips) * height / 28 * 0.6), layout="constrained"
    )
    axes.imshow(np.concatenate(strips), cmap="gray", vmin=-1, vmax=1)
    axes.set_yticks([height * (i + 0.5) for i in range(len(labels))], labels, fontsize="small")
    axes.set_xticks([])
    axes.set_title("the same noises, decoded by every sampler at each NFE", fontsize="medium")
    return figure


def sampler_comparison_figure(tables: dict[str, list[dict]]) -> Figure:
    """A sweep's sampler tables side by side, up to three in a row: each model's Fréchet distance
    against NFE, with its floor band, on one shared y axis."""
    columns = min(3, len(tables))
    rows = -(-len(tables) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5 * columns, 4.2 * rows), sharex=True, sharey=True, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    limits = _nfe_limits([row for table in tables.values() for row in table])
    for panel, (model, table) in zip(axes.flat, tables.items(), strict=False):  # panels may be left over
        _draw_sampler_distances(panel, table, "frechet_distance")
        panel.set_xscale("log")
        panel.set_yscale("log")
        panel.set_xlim(*limits)
        panel.set_xlabel("network evaluations (counted)")
        panel.set_title(f"{model}: Fréchet distance", fontsize="medium")
        panel.grid(alpha=0.3, which="both")
        panel.legend(fontsize="x-small")
    for panel in list(axes.flat)[len(tables) :]:
        panel.set_visible(False)
    return figure


def _truth(value) -> bool:
    """A boolean as a row holds it: True, or "True" read back from a CSV."""
    return value is True or str(value) == "True"


# --- the files: each figure saved as the rule's PNG ----------------------------------------------


def plot_timestep_loss(rows: list[dict], path: str | os.PathLike) -> None:
    _save(timestep_loss_figure(rows), path)


def plot_timestep_loss_snr(rows: list[dict], bound: dict, path: str | os.PathLike) -> None:
    _save(timestep_loss_snr_figure(rows, bound), path)


def plot_timestep_loss_comparison(
    rows: list[dict], path: str | os.PathLike, bounds: dict[str, dict] | None = None
) -> None:
    _save(timestep_loss_comparison_figure(rows, bounds), path)


def plot_training_history(rows: list[dict], path: str | os.PathLike) -> None:
    _save(training_history_figure(rows), path)


def plot_sample_quality(rows: list[dict], path: str | os.PathLike) -> None:
    _save(sample_quality_figure(rows), path)


def plot_interpolation_metrics(rows: list[dict], path: str | os.PathLike) -> None:
    _save(interpolation_metrics_figure(rows), path)


def plot_ddim_fidelity(rows: list[dict], path: str | os.PathLike) -> None:
    _save(ddim_fidelity_figure(rows), path)


def plot_trajectory_heatmap(rows: list[dict], path: str | os.PathLike) -> None:
    _save(trajectory_heatmap_figure(rows), path)


def plot_trajectory_bound(rows: list[dict], bounds: list[dict], path: str | os.PathLike) -> None:
    _save(trajectory_bound_figure(rows, bounds), path)


def plot_sampler_grid(previews: dict, path: str | os.PathLike) -> None:
    _save(sampler_grid_figure(previews), path)


def plot_sampler_comparison(tables: dict[str, list[dict]], path: str | os.PathLike) -> None:
    _save(sampler_comparison_figure(tables), path)


def plot_sampler_table(rows: list[dict], path: str | os.PathLike, recommendation: dict | None = None) -> None:
    _save(sampler_table_figure(rows, recommendation), path)


def _save(figure: Figure, path: str | os.PathLike) -> None:
    with atomic_output(path) as temporary:
        # A fixed Software tag and no dates keep the PNG byte-identical across runs.
        figure.savefig(temporary, dpi=120, metadata={"Software": None})
    plt.close(figure)
