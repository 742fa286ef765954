"""plots.py directly, for what other tests do not read back: each figure built from rows as a rule
reads them from its CSV (every value a string) and read back from matplotlib (bar heights, error
bars, line data, labels and titles), and each ``plot_*`` that no other test saves twice writing a
PNG that opens and is byte-identical from one call to the next.

Read back elsewhere: the log-SNR figure's data (test_bound.py), the comparison figure
(test_compare.py), the sample-quality panels (test_quality.py)."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from diffusion_diagnostics.files import read_csv, write_csv
from diffusion_diagnostics.plots import (
    LOG_SNR_LABEL,
    ddim_fidelity_figure,
    interpolation_metrics_figure,
    plot_ddim_fidelity,
    plot_interpolation_metrics,
    plot_sample_quality,
    plot_timestep_loss,
    plot_training_history,
    timestep_loss_figure,
    timestep_loss_snr_figure,
    training_history_figure,
)
from diffusion_diagnostics.quality import NEIGHBOUR_METRICS, QUALITY_COLUMNS
from diffusion_diagnostics.training import HISTORY_COLUMNS


def read_back(rows: list[dict], tmp_path, columns: list[str] | None = None) -> list[dict]:
    """The rows as a rule reads them: written with files.write_csv, read with files.read_csv."""
    path = tmp_path / "rows.csv"
    write_csv(rows, path, columns)
    return read_csv(path)


def bar_heights(axes) -> list[float]:
    return [patch.get_height() for patch in axes.patches]


def points(line) -> list[float]:
    """A line's (x, y) points, flattened to x0, y0, x1, y1, … for pytest.approx."""
    return line.get_xydata().ravel().tolist()


def approx_points(pairs) -> object:
    return pytest.approx([value for pair in pairs for value in pair])


def tick_labels(axes) -> list[str]:
    return [label.get_text() for label in axes.get_xticklabels()]


# --- rows as each rule's CSV holds them --------------------------------------------------------


def loss_rows(tmp_path, buckets: int = 10, timesteps: int = 1000) -> list[dict]:
    """The loss CSV's first columns for ``buckets`` equal buckets; bucket 3's standard error is NaN
    (a bucket of one sample)."""
    width = timesteps // buckets
    rows = [
        {"bucket": b, "t_start": b * width, "t_end": (b + 1) * width - 1, "mse": 0.5 / (b + 1),
         "count": 8, "std_error": math.nan if b == 3 else 0.01 * (b + 1)}
        for b in range(buckets)
    ]  # fmt: skip
    return read_back(rows, tmp_path)


def history_rows(tmp_path, steps: int = 120, validate_every: int | None = 40) -> list[dict]:
    """The training history CSV: a loss per step, the learning rate and the EMA model's validation
    loss on the steps that validated, empty elsewhere."""
    rows = [
        {"step": step, "train_loss": 1.0 / step + (0.25 if step % 2 else 0.0), "lr": None,
         "val_loss": 2.0 / step if validate_every and step % validate_every == 0 else None}
        for step in range(1, steps + 1)
    ]  # fmt: skip
    rows[-1]["lr"] = 1e-4
    return read_back(rows, tmp_path, HISTORY_COLUMNS)


VARIANTS = ("ddpm-lerp-independent", "ddim-slerp-shared", "ddim-lerp-shared")


def interpolation_rows(tmp_path) -> list[dict]:
    """Three rows per variant, as the interpolation_metrics rule writes them; variant v's metrics
    are (v + 1) times the first's, row r's grow with r."""
    rows = []
    for v, variant in enumerate(VARIANTS):
        sampler, method, noise = variant.split("-")
        for r in range(3):
            scale = (v + 1) * (1 + r)
            rows.append(
                {"variant": variant, "sampler": sampler, "method": method, "noise": noise, "row": r,
                 "mean_step": 0.1 * scale, "max_over_mean": 1.5 * scale, "on_manifold_rate": 0.05 * scale,
                 "label_changes": scale}
            )  # fmt: skip
    return read_back(rows, tmp_path)


def fidelity_rows(tmp_path, clippings=(False, True)) -> list[dict]:
    """The DDIM fidelity CSV, steps in an order where text order and number order differ."""
    rows = [
        {"num_steps": s, "clip_x0": clip, "rmse_to_reference": 0.0 if s == 1000 else (2 if clip else 1) / s,
         "seconds": s / 100}
        for clip in clippings
        for s in (1000, 10, 250, 50)
    ]  # fmt: skip
    return read_back(rows, tmp_path)


def quality_rows(tmp_path) -> list[dict]:
    """The sample-quality CSV: three sets measured against the held-out digits, and those digits."""
    sets = ("samples", "real train (floor)", "uniform noise (ceiling)", "real held-out")
    rows = []
    for i, name in enumerate(sets):
        held_out = name == "real held-out"
        row = {"set": name, "n": 100, "frechet_distance": None if held_out else 10.0 ** (i - 1)}
        row.update({metric: None if held_out else 0.2 * (i + 1) for metric in NEIGHBOUR_METRICS})
        row.update({"mean_max_softmax": 0.9, "confident_share": 0.8})
        row.update({f"class_{d}": 10 + (d if i == 0 else 0) - (4 if i == 0 else 0) for d in range(10)})
        rows.append(row)
    return read_back(rows, tmp_path, QUALITY_COLUMNS)


# --- the per-timestep loss bar chart -----------------------------------------------------------


def test_timestep_loss_figure_keeps_the_seeds_title_ticks_and_labels(tmp_path):
    axes = timestep_loss_figure(loss_rows(tmp_path)).axes[0]
    # The seed's figure, exactly: the README and the report show it under these words.
    assert axes.get_title() == "Noise-prediction error vs timestep"
    assert tick_labels(axes) == [f"{100 * b}-{100 * b + 99}" for b in range(10)]
    assert axes.get_ylabel() == "MSE (ε-prediction error)"
    assert axes.get_xlabel() == "timestep t"


def test_timestep_loss_figure_draws_each_buckets_mean_and_standard_error(tmp_path):
    rows = loss_rows(tmp_path)
    axes = timestep_loss_figure(rows).axes[0]
    assert bar_heights(axes) == pytest.approx([0.5 / (b + 1) for b in range(10)])
    (bars,) = [c for c in axes.containers if hasattr(c, "errorbar")]
    segments = bars.errorbar.lines[2][0].get_segments()
    # ±1 standard error around each mean; a NaN standard error is drawn as none, not dropped.
    spans = [(s[1][1] - s[0][1]) / 2 for s in segments]
    assert spans == pytest.approx([0.0 if b == 3 else 0.01 * (b + 1) for b in range(10)])
    assert [s[0][0] for s in segments] == list(range(10))


def test_timestep_loss_ticks_slant_only_when_many(tmp_path):
    many = timestep_loss_figure(loss_rows(tmp_path, buckets=10)).axes[0]
    few = timestep_loss_figure(loss_rows(tmp_path, buckets=4)).axes[0]
    assert {(label.get_rotation(), label.get_ha()) for label in many.get_xticklabels()} == {(35.0, "right")}
    assert {(label.get_rotation(), label.get_ha()) for label in few.get_xticklabels()} == {(0.0, "center")}
    assert tick_labels(few) == ["0-249", "250-499", "500-749", "750-999"]


# --- the errors and bound against log-SNR: what test_bound.py does not read back -------------------


def snr_rows(tmp_path, objective: str) -> list[dict]:
    rows = [
        {"mse": 0.5 / (b + 1), "std_error": 0.01, "x0_mse": 0.1 * (b + 1), "x0_std_error": "nan",
         "v_mse": 0.3, "v_std_error": 0.02, "objective": objective, "log_snr_start": 6 - 4 * b,
         "log_snr_end": 2 - 4 * b, "vb_bpd": 0.05 / (b + 1), "vb_std_error": 0.001}
        for b in range(3)
    ]  # fmt: skip
    return read_back(rows, tmp_path)


BOUND = {"total_bpd": 1.2345, "std_error": 0.0123, "decoder_bpd": 0.5, "kl_bpd": 0.7, "prior_bpd": 3e-6,
         "num_images": 1234, "timesteps": 1000}  # fmt: skip


def test_log_snr_figure_draws_the_training_objective_bold(tmp_path):
    errors, _ = timestep_loss_snr_figure(snr_rows(tmp_path, "v_prediction"), BOUND).axes
    widths = {c.get_label(): c.lines[0].get_linewidth() for c in errors.containers}
    assert widths == {"ε-MSE": 1.0, "x̂₀-MSE": 1.0, "v-MSE (training objective)": 2.5}
    assert errors.get_xlabel() == LOG_SNR_LABEL and errors.xaxis_inverted()


def test_log_snr_figure_says_which_images_were_measured(tmp_path):
    rows = snr_rows(tmp_path, "epsilon")
    workflow = {**BOUND, "split": "heldout", "data_source": "mnist-5k"}
    assert timestep_loss_snr_figure(rows, workflow).get_suptitle() == (
        "1,234 images of the heldout split (mnist-5k), T = 1000"
    )
    # A library call's nll.json has neither: the title says only what it knows.
    assert timestep_loss_snr_figure(rows, BOUND).get_suptitle() == "1,234 images, T = 1000"
    _, terms = timestep_loss_snr_figure(rows, BOUND).axes
    assert terms.get_title() == "Bound 1.234 ± 0.012 bits/dim: L_0 0.500, Σ L_t 0.700, L_T 3e-06"


# --- the training history ----------------------------------------------------------------------


def test_training_history_draws_each_step_a_running_mean_and_validation(tmp_path):
    rows = history_rows(tmp_path)
    axes = training_history_figure(rows).axes[0]
    raw, smooth, validation = axes.get_lines()
    train = [1.0 / step + (0.25 if step % 2 else 0.0) for step in range(1, 121)]
    assert raw.get_xdata().tolist() == list(range(1, 121))
    assert raw.get_ydata().tolist() == pytest.approx(train)
    # 120 steps: a running mean of 120 // 50 = 2, so the odd steps' +0.25 is halved.
    assert smooth.get_ydata().tolist() == pytest.approx(
        [train[0]] + [(a + b) / 2 for a, b in zip(train[:-1], train[1:], strict=True)]
    )
    # Only the steps that validated (the others' cells are empty).
    assert points(validation) == approx_points([(40, 0.05), (80, 0.025), (120, 2 / 120)])
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [
        "train (per step)",
        "train (mean of 2 steps)",
        "validation (EMA weights)",
    ]
    assert axes.get_yscale() == "log" and axes.get_title() == "Training loss"
    assert axes.get_xlabel() == "step" and axes.get_ylabel() == "MSE (ε-prediction error)"


def test_training_history_without_validation_draws_no_validation_line(tmp_path):
    axes = training_history_figure(history_rows(tmp_path, steps=30, validate_every=None)).axes[0]
    assert [line.get_label() for line in axes.get_lines()] == ["train (per step)", "train (mean of 1 steps)"]
    raw, smooth = axes.get_lines()
    assert smooth.get_ydata().tolist() == raw.get_ydata().tolist()  # a mean of one step is the step


# --- the interpolation metrics: every panel (test_quality.py reads the first) ---------------------


def test_interpolation_metrics_figure_draws_every_panels_means_and_rows(tmp_path):
    figure = interpolation_metrics_figure(interpolation_rows(tmp_path))
    assert figure.get_suptitle() == (
        "Interpolation paths judged by the digit classifier (bar: mean over rows; dots: rows)"
    )
    panels = figure.axes
    assert [axes.get_title() for axes in panels] == [
        "mean step (pixel RMSE)",
        "largest / mean step",
        "share of clear digits",
        "class changes per row",
    ]
    for axes, first in zip(panels, (0.1, 1.5, 0.05, 1.0), strict=True):
        # Rows scale 1, 2, 3 within a variant (mean 2), variants 1, 2, 3 times the first.
        assert bar_heights(axes) == pytest.approx([2 * first * (v + 1) for v in range(3)])
        # Each row a dot, spread evenly across its variant's bar.
        dots = [points(line) for line in axes.get_lines()]
        assert dots == [
            approx_points(
                [(v - 0.25, first * (v + 1)), (v, 2 * first * (v + 1)), (v + 0.25, 3 * first * (v + 1))]
            )
            for v in range(3)
        ]
        assert tick_labels(axes) == list(VARIANTS)
        # Three names side by side overlap: slanted.
        assert {label.get_rotation() for label in axes.get_xticklabels()} == {30.0}


# --- DDIM fidelity, from its CSV ---------------------------------------------------------------


def test_ddim_fidelity_figure_reads_the_csvs_text(tmp_path):
    figure = ddim_fidelity_figure(fidelity_rows(tmp_path))
    errors, seconds = figure.axes
    drawn = {line.get_label(): points(line) for line in errors.get_lines()}
    # "True" / "False" read back as the clipping, steps in number order (text order puts 1000 first);
    # the reference's own zero is left off the log axis.
    assert drawn == {
        "RMSE, not clipped": approx_points([(10, 0.1), (50, 0.02), (250, 0.004)]),
        "RMSE, x0 clipped": approx_points([(10, 0.2), (50, 0.04), (250, 0.008)]),
    }
    timed = {line.get_label(): points(line) for line in seconds.get_lines()}
    every_step = approx_points([(10, 0.1), (50, 0.5), (250, 2.5), (1000, 10.0)])
    assert timed == {"wall time, not clipped": every_step, "wall time, x0 clipped": every_step}
    assert tick_labels(errors) == ["10", "50", "250", "1000"]
    assert errors.get_xlabel() == "DDIM steps S"
    assert errors.get_ylabel() == "RMSE to S = 1000, same clipping (pixels in [-1, 1])"
    assert seconds.get_ylabel() == "wall time (s)"
    assert errors.get_xscale() == errors.get_yscale() == "log"
    # One legend for both axes' lines.
    assert [text.get_text() for text in errors.get_legend().get_texts()] == [
        "RMSE, not clipped",
        "wall time, not clipped",
        "RMSE, x0 clipped",
        "wall time, x0 clipped",
    ]


def test_ddim_fidelity_figure_with_one_clipping_draws_only_it(tmp_path):
    errors, seconds = ddim_fidelity_figure(fidelity_rows(tmp_path, clippings=(False,))).axes
    assert [line.get_label() for line in errors.get_lines()] == ["RMSE, not clipped"]
    assert [line.get_label() for line in seconds.get_lines()] == ["wall time, not clipped"]


# --- the PNGs ------------------------------------------------------------------------------------

# Each plot_* with the rows its rule gives it and the figure size it must keep (at 120 dpi). The
# log-SNR and comparison PNGs are saved twice in test_bound.py and test_compare.py.
PLOTS = {
    "timestep_loss": (plot_timestep_loss, loss_rows, (840, 480)),  # ten buckets: 0.7 in each
    "training_history": (plot_training_history, history_rows, (840, 480)),
    "sample_quality": (plot_sample_quality, quality_rows, (1920, 504)),
    "interpolation_metrics": (plot_interpolation_metrics, interpolation_rows, (1032, 840)),
    "ddim_fidelity": (plot_ddim_fidelity, fidelity_rows, (840, 480)),
}


@pytest.mark.parametrize("name", list(PLOTS))
def test_each_plot_writes_the_same_png_every_time(tmp_path, name):
    plot, rows_for, size = PLOTS[name]
    rows = rows_for(tmp_path)
    plot(rows, tmp_path / "one.png")
    plot(rows, tmp_path / "two.png")
    with Image.open(tmp_path / "one.png") as image:
        assert image.format == "PNG" and image.size == size
        # No matplotlib version in the file, so an upgrade alone does not change the outputs.
        assert "Software" not in image.info
    # Nor a date: the workflow's outputs are byte-identical run to run.
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "rows.csv", "two.png"]


# --- the sampler table -----------------------------------------------------------------------------


def sampler_rows() -> list[dict]:
    """A table as sampler_table writes it: the floor, then two samplers at two NFE, one error falling
    at order 2 (0.1 at 10 NFE, 0.025 at 20)."""
    from diffusion_diagnostics.sampler_table import FLOOR, SAMPLER_COLUMNS

    def row(sampler, nfe, distance, ode, spread=None):
        values = {"sampler": sampler, "spacing": "trailing", "steps": nfe, "nfe": nfe, "seeds": 2,
                  "frechet_distance": distance, "frechet_distance_spread": spread, "kid": distance / 10,
                  "kid_spread": None, "ode_rmse": ode}  # fmt: skip
        return {column: values.get(column) for column in SAMPLER_COLUMNS}

    floor = {**row(FLOOR, None, 2.0, None, 0.5), "spacing": "", "steps": None}
    return [
        floor,
        row("ddim", 10, 9.0, 0.1, 1.0),
        row("ddim", 20, 5.0, 0.025, 1.0),
        row("heun", 19, 4.0, 0.01),
    ]


def test_sampler_table_figure_draws_the_floor_band_the_spreads_and_each_order(tmp_path):
    from diffusion_diagnostics.plots import sampler_table_figure

    rows = read_back(sampler_rows(), tmp_path)
    figure = sampler_table_figure(rows, {"sentence": "ddim (trailing) at 20 NFE"})
    frechet, _, ode = figure.axes
    assert "ddim (trailing) at 20 NFE" in figure._suptitle.get_text()
    [band] = frechet.patches  # the floor: its mean ± spread
    assert band.get_label() == "floor ± spread" and band.get_extents().height > 0
    labels = ode.get_legend_handles_labels()[1]
    assert labels == ["ddim (trailing): order 2.00"]  # heun's one point fits no slope
    assert frechet.get_xlim() == pytest.approx((10 / 1.5, 20 * 1.5))


def test_sampler_grid_and_comparison_figures_label_every_cell_and_model(tmp_path):
    import torch

    from diffusion_diagnostics.plots import sampler_comparison_figure, sampler_grid_figure

    previews = {
        "ddim (trailing), 10 NFE": torch.zeros(8, 1, 28, 28),
        "heun (trailing), 19 NFE": torch.ones(8, 1, 28, 28),
    }
    [grid] = sampler_grid_figure(previews).axes
    assert [label.get_text() for label in grid.get_yticklabels()] == list(previews)
    rows = read_back(sampler_rows(), tmp_path)
    figure = sampler_comparison_figure({"a": rows, "b": rows, "c": rows, "d": rows})
    shown = [axes for axes in figure.axes if axes.get_visible()]
    assert [axes.get_title() for axes in shown] == [f"{model}: Fréchet distance" for model in "abcd"]
    assert len(figure.axes) == 6  # two rows of three, the last two hidden
