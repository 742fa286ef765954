"""The package functions behind compare_timestep_loss: a sweep's loss CSVs combined, and their figure."""

from __future__ import annotations

import csv

import pytest

from diffusion_diagnostics.analysis import combine_timestep_loss_csvs
from diffusion_diagnostics.errors import DiagnosticsError
from diffusion_diagnostics.files import write_csv
from diffusion_diagnostics.plots import plot_timestep_loss_comparison, timestep_loss_comparison_figure


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- the package functions behind compare_timestep_loss ------------------------------------------


LOSS_COLUMNS = ["bucket", "t_start", "t_end", "mse", "count", "std_error", "log_snr_start", "log_snr_end"]
BOUND_COLUMNS = ["vb_bpd", "vb_std_error"]


def write_loss_csv(path, mse: list[float], log_snr_shift: float = 0.0) -> None:
    """A loss CSV with the columns the comparison reads: its ε-MSE, log-SNR ends and bound terms."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOSS_COLUMNS + BOUND_COLUMNS)
        for bucket, value in enumerate(mse):
            log_snr = (5 - 2 * bucket + log_snr_shift, 3 - 2 * bucket + log_snr_shift)
            error = "nan" if bucket else 0.01
            writer.writerow(
                [bucket, 10 * bucket, 10 * bucket + 9, value, 4, error, *log_snr, value / 100, error]
            )


def test_combined_rows_keep_model_order_and_values(tmp_path):
    write_loss_csv(tmp_path / "b.csv", [0.5, 0.25])
    write_loss_csv(tmp_path / "a.csv", [0.125, 0.0625])
    rows = combine_timestep_loss_csvs({"b": tmp_path / "b.csv", "a": tmp_path / "a.csv"})
    assert [(row["model"], row["mse"]) for row in rows] == [
        ("b", "0.5"),
        ("b", "0.25"),
        ("a", "0.125"),
        ("a", "0.0625"),
    ]
    write_csv(rows, tmp_path / "compare.csv")
    assert read_csv(tmp_path / "compare.csv") == rows


def test_combining_nothing_or_mismatched_columns_is_an_error(tmp_path):
    with pytest.raises(DiagnosticsError, match="names no model"):
        combine_timestep_loss_csvs({})
    write_loss_csv(tmp_path / "a.csv", [0.5])
    (tmp_path / "odd.csv").write_text("bucket,mse\n0,0.5\n")
    with pytest.raises(DiagnosticsError, match="columns"):
        combine_timestep_loss_csvs({"a": tmp_path / "a.csv", "odd": tmp_path / "odd.csv"})


def test_comparison_plot_is_byte_stable(tmp_path):
    write_loss_csv(tmp_path / "a.csv", [0.5, 0.25, 0.2])
    # Another schedule: the same buckets sit elsewhere on the log-SNR axis.
    write_loss_csv(tmp_path / "b.csv", [0.4, 0.3, 0.1], log_snr_shift=-1.5)
    rows = combine_timestep_loss_csvs({"a": tmp_path / "a.csv", "b": tmp_path / "b.csv"})
    bounds = {"a": {"total_bpd": 1.5, "std_error": 0.02}, "b": {"total_bpd": 1.25, "std_error": 0.01}}
    plot_timestep_loss_comparison(rows, tmp_path / "one.png", bounds)
    plot_timestep_loss_comparison(rows, tmp_path / "two.png", bounds)
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()


def test_comparison_figure_puts_each_model_on_its_own_log_snr():
    """Models of different schedules: each line sits at its own buckets' log-SNR, the total bound
    in its label."""
    rows = [
        {"model": model, "mse": mse, "std_error": "0.01", "vb_bpd": mse / 100, "vb_std_error": "nan",
         "log_snr_start": 5 - 2 * bucket + shift, "log_snr_end": 3 - 2 * bucket + shift}
        for model, shift, values in (("a", 0.0, [0.5, 0.25]), ("b", -1.5, [0.4, 0.3]))
        for bucket, mse in enumerate(values)
    ]  # fmt: skip
    bounds = {"a": {"total_bpd": 1.5, "std_error": 0.02}, "b": {"total_bpd": 1.25, "std_error": 0.01}}
    errors, terms = timestep_loss_comparison_figure(rows, bounds).axes
    lines = {line.get_label(): line.get_xydata().tolist() for line in errors.get_lines()}
    assert lines == {
        "a (1.500 ± 0.020 bits/dim)": [[4.0, 0.5], [2.0, 0.25]],
        "b (1.250 ± 0.010 bits/dim)": [[2.5, 0.4], [0.5, 0.3]],
    }
    assert errors.get_yscale() == "log" and errors.xaxis_inverted()
    assert [line.get_ydata().tolist() for line in terms.get_lines()] == [[0.005, 0.0025], [0.004, 0.003]]
