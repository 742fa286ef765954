"""Quality metrics judged by the classifier: the Fréchet distance against closed forms, precision,
recall, density and coverage against a brute-force count and the reference package, confidence
and class counts, interpolation-path metrics on hand-built grids, the quality table, and figures."""

from __future__ import annotations

import csv
import json
import math

import prdc
import pytest
import torch
from PIL import Image
from torch import nn
from torch_fidelity import metric_kid

from diffusion_diagnostics import DiagnosticsError, DiffusionProcess, quality
from diffusion_diagnostics.classifier import DigitClassifier
from diffusion_diagnostics.decoding import Sampler
from diffusion_diagnostics.diffusion import SamplingOptions
from diffusion_diagnostics.files import write_csv, write_json
from diffusion_diagnostics.plots import (
    ddim_fidelity_figure,
    interpolation_metrics_figure,
    plot_sample_quality,
    sample_quality_figure,
    timestep_loss_figure,
)
from diffusion_diagnostics.quality import (
    NEIGHBOUR_METRICS,
    QUALITY_COLUMNS,
    Judgement,
    class_histogram,
    confidence_stats,
    draw_samples,
    frechet_distance,
    interpolation_row_metrics,
    judge_images,
    kernel_distance,
    precision_recall_density_coverage,
    sample_quality_rows,
)

from doubles import one_error_line, tiny_unet


def corners(dims: int) -> torch.Tensor:
    """The 2^dims points (±1, …, ±1): sample mean exactly 0, sample covariance exactly
    2^dims / (2^dims - 1) times the identity."""
    grid = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * dims)
    return grid.reshape(-1, dims)


def with_moments(mean: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Points whose sample mean and (n - 1) sample covariance are exactly the ones given."""
    points = corners(len(mean))
    n = len(points)
    factor = torch.linalg.cholesky(covariance * (n - 1) / n)
    return points @ factor.T + mean


# --- Fréchet distance ----------------------------------------------------------------------------


def test_frechet_distance_is_exact_for_known_diagonal_moments():
    """Diagonal covariances commute: the trace term is Σ (√a - √b)²."""
    mean_a, mean_b = torch.tensor([0.0, 1.0, 2.0, -1.0]).double(), torch.tensor([1.0, 1.0, 0.0, 0.5]).double()
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25, 2.0]).double(), torch.tensor([2.0, 1.0, 1.0, 2.0]).double()
    a, b = with_moments(mean_a, torch.diag(var_a)), with_moments(mean_b, torch.diag(var_b))
    expected = (mean_a - mean_b).pow(2).sum() + (var_a.sqrt() - var_b.sqrt()).pow(2).sum()
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=1e-10)


def test_frechet_distance_is_exact_for_non_commuting_covariances():
    """In 2-D, tr((Σa Σb)^½) = √(tr(Σa Σb) + 2 √(det Σa det Σb)), for any Σa, Σb."""
    cov_a = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    cov_b = torch.tensor([[1.0, -0.3], [-0.3, 0.5]], dtype=torch.float64)
    mean_a, mean_b = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    trace_root = math.sqrt((cov_a @ cov_b).trace() + 2 * math.sqrt(cov_a.det() * cov_b.det()))
    expected = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    a, b = with_moments(mean_a, cov_a), with_moments(mean_b, cov_b)
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=1e-10)


def test_frechet_distance_of_large_gaussian_samples_matches_the_closed_form():
    generator = torch.Generator().manual_seed(0)
    mean_a, mean_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([2.0, 1.0, 1.0])
    a = mean_a + var_a.sqrt() * torch.randn((100_000, 3), generator=generator)
    b = mean_b + var_b.sqrt() * torch.randn((100_000, 3), generator=generator)
    expected = (mean_a - mean_b).pow(2).sum() + (var_a.sqrt() - var_b.sqrt()).pow(2).sum()
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=0.02)


def test_frechet_distance_is_symmetric_zero_on_itself_and_rotation_invariant():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn((200, 6), generator=generator, dtype=torch.float64)
    mixing = torch.randn((6, 6), generator=generator, dtype=torch.float64)
    b = torch.randn((150, 6), generator=generator, dtype=torch.float64) @ mixing + 0.3
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    rotation, _ = torch.linalg.qr(torch.randn((6, 6), generator=generator, dtype=torch.float64))
    assert frechet_distance(a @ rotation, b @ rotation) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    assert frechet_distance(a, b) > 1.0


@pytest.mark.parametrize(
    ("a", "b", "words"),
    [
        (torch.zeros(1, 4), torch.zeros(5, 4), "N ≥ 2"),
        (torch.zeros(5, 4), torch.zeros(5), "N ≥ 2"),
        (torch.zeros(5, 4), torch.zeros(5, 3), "4 and 3"),
        (torch.full((5, 4), float("nan")), torch.zeros(5, 4), "NaN"),
    ],
)
def test_frechet_distance_refuses_bad_sets(a, b, words):
    with pytest.raises(DiagnosticsError, match=words):
        frechet_distance(a, b)


# --- precision, recall, density, coverage --------------------------------------------------------


def brute_force_neighbour_metrics(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict:
    """The four metrics counted point by point from their definitions, in plain Python."""
    real, fake = real.tolist(), fake.tolist()

    def distance(a, b):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))

    def radius(i, points):
        return sorted(distance(points[i], q) for j, q in enumerate(points) if j != i)[k - 1]

    real_radii = [radius(i, real) for i in range(len(real))]
    fake_radii = [radius(j, fake) for j in range(len(fake))]
    # in_real_ball[j][i]: sample j lies inside real point i's ball.
    in_real_ball = [[distance(f, r) < real_radii[i] for i, r in enumerate(real)] for f in fake]
    in_a_fake_ball = [any(distance(r, f) < fake_radii[j] for j, f in enumerate(fake)) for r in real]
    holds_a_fake = [any(in_real_ball[j][i] for j in range(len(fake))) for i in range(len(real))]
    return {
        "precision": sum(any(balls) for balls in in_real_ball) / len(fake),
        "recall": sum(in_a_fake_ball) / len(real),
        "density": sum(sum(balls) for balls in in_real_ball) / (k * len(fake)),
        "coverage": sum(holds_a_fake) / len(real),
    }


def gaussian_sets(n_real: int, n_fake: int, dims: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real points around 0, fake ones shifted and wider: the four metrics fall well inside (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn((n_real, dims), generator=generator, dtype=torch.float64)
    fake = 1.3 * torch.randn((n_fake, dims), generator=generator, dtype=torch.float64) + 0.4
    return real, fake


@pytest.mark.parametrize(
    ("n_real", "n_fake", "dims", "k"),
    # Up to 25 rows cdist subtracts coordinates; beyond, it uses the matrix-product form.
    [(12, 9, 2, 1), (20, 14, 3, 3), (60, 40, 5, 5), (45, 70, 8, 2)],
)
def test_neighbour_metrics_equal_a_brute_force_count(n_real, n_fake, dims, k):
    real, fake = gaussian_sets(n_real, n_fake, dims, seed=n_real + k)
    assert precision_recall_density_coverage(real, fake, k) == brute_force_neighbour_metrics(real, fake, k)


def test_neighbour_metrics_count_ties_and_duplicates_as_the_brute_force_does():
    """Integer points on a small grid: many exact ties and duplicate points, all distances exact."""
    generator = torch.Generator().manual_seed(3)
    real = torch.randint(0, 4, (40, 3), generator=generator).double()
    fake = torch.randint(0, 4, (30, 3), generator=generator).double()
    for k in (1, 3, 6):
        expected = brute_force_neighbour_metrics(real, fake, k)
        assert precision_recall_density_coverage(real, fake, k) == expected, k


def test_neighbour_balls_are_open():
    """1-D, k = 1: real radii 1, 1, 2, 4 (at 0, 1, 3, 7). The fake point at -1 is exactly at the radius
    of the ball at 0 and counts as outside; the one at 5, at the radius of 3's ball, is inside 7's."""
    real = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    fake = torch.tensor([[-1.0], [5.0]])
    assert precision_recall_density_coverage(real, fake, 1) == {
        "precision": 0.5,
        "recall": 1.0,
        "density": 0.5,
        "coverage": 0.25,
    }


def test_neighbour_metrics_do_not_depend_on_the_chunk_size(monkeypatch):
    real, fake = gaussian_sets(50, 30, 4, seed=7)
    whole = precision_recall_density_coverage(real, fake, 4)
    # Seven entries per chunk: a single row per chunk, narrower than one row of distances.
    monkeypatch.setattr(quality, "DISTANCE_CHUNK_ELEMENTS", 7)
    assert precision_recall_density_coverage(real, fake, 4) == whole
    monkeypatch.setattr(quality, "DISTANCE_CHUNK_ELEMENTS", 120)
    assert precision_recall_density_coverage(real, fake, 4) == whole


@pytest.mark.parametrize(("n_real", "n_fake", "k"), [(400, 300, 5), (250, 500, 3)])
def test_neighbour_metrics_match_the_reference_package(n_real, n_fake, k):
    real, fake = gaussian_sets(n_real, n_fake, 16, seed=k)
    reference = prdc.compute_prdc(real.numpy(), fake.numpy(), nearest_k=k)
    ours = precision_recall_density_coverage(real, fake, k)
    assert list(ours) == list(NEIGHBOUR_METRICS)
    for metric in NEIGHBOUR_METRICS:
        assert ours[metric] == pytest.approx(float(reference[metric]), abs=1e-12), metric


def torch_fidelity_kid(real, fake, subsets, subset_size):
    reference = metric_kid.kid_features_to_metric(
        real, fake, kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=1, verbose=False
    )
    return reference["kernel_inception_distance_mean"], reference["kernel_inception_distance_std"]


def test_kernel_distance_is_torch_fidelitys_on_whole_sets():
    """Subsets as large as the sets are the sets themselves, whatever each draws: the same number."""
    real, fake = gaussian_sets(200, 200, 16, seed=3)
    fake = fake * 1.2 + 0.1
    mean, std = torch_fidelity_kid(real, fake, subsets=3, subset_size=200)
    ours = kernel_distance(real, fake, subsets=3, subset_size=200)
    assert ours["kid"] == pytest.approx(mean, rel=1e-12) and mean > 0.01
    assert ours["kid_std"] == pytest.approx(std, abs=1e-12)


def test_kernel_distance_over_subsets_agrees_with_torch_fidelitys_within_their_spread():
    """Different random subsets of the same sets: two estimates of one expectation."""
    real, fake = gaussian_sets(400, 300, 16, seed=5)
    fake = fake * 1.1
    mean, std = torch_fidelity_kid(real, fake, subsets=200, subset_size=100)
    ours = kernel_distance(real, fake, subsets=200, subset_size=100)
    assert ours["kid_std"] == pytest.approx(std, rel=0.15)
    assert abs(ours["kid"] - mean) < 4 * std / math.sqrt(200)


def test_kernel_distance_of_one_distribution_is_about_zero_and_may_be_negative():
    points, _ = gaussian_sets(1000, 2, 8, seed=7)
    real, fake = points[:500], points[500:]
    same = kernel_distance(real, fake, subsets=50, subset_size=200)
    assert abs(same["kid"]) < 3 * same["kid_std"]
    far = kernel_distance(real, fake + 1.0, subsets=50, subset_size=200)
    assert far["kid"] > 10 * far["kid_std"]
    one_error_line(lambda: kernel_distance(real, fake[:, :4]), "kernel distance", "(500, 8)", "(500, 4)")
    one_error_line(lambda: kernel_distance(real[:1], fake), "kernel distance needs 2 rows")


def test_a_set_against_itself_scores_one_on_all_four():
    """Each open ball holds its own centre and its k - 1 nearest neighbours: k points of the set."""
    real, _ = gaussian_sets(80, 2, 6, seed=11)
    assert precision_recall_density_coverage(real, real.clone(), 5) == dict.fromkeys(NEIGHBOUR_METRICS, 1.0)


def clusters(centres: torch.Tensor, per_cluster: int, spread: float, generator) -> torch.Tensor:
    """``per_cluster`` Gaussian points around each centre, with standard deviation ``spread``."""
    shape = (len(centres), per_cluster, centres.shape[1])
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)
    return (centres[:, None] + spread * noise).reshape(-1, centres.shape[1])


def test_a_model_that_draws_only_good_ones_has_full_precision_and_little_recall():
    """Real digits in four far-apart clusters; the samples a tight clump at the heart of one of
    them. Every sample looks real, so precision is 1 and they crowd where real points are densest
    (density above 1); but the samples' own balls are tiny and sit in one cluster of four, so
    recall and coverage stay at or below a quarter."""
    generator = torch.Generator().manual_seed(0)
    centres = 20 * torch.eye(4, 8, dtype=torch.float64)
    real = clusters(centres, 50, 1.0, generator)
    ones = clusters(centres[1:2], 60, 0.2, generator)
    metrics = precision_recall_density_coverage(real, ones, 5)
    assert metrics["precision"] == 1.0
    assert metrics["density"] > 1.0
    assert metrics["recall"] <= 0.25 and metrics["coverage"] <= 0.25
    # Samples spread over all four clusters like the real points reach them all.
    every_digit = precision_recall_density_coverage(real, clusters(centres, 15, 1.0, generator), 5)
    assert every_digit["recall"] > 0.75 and every_digit["coverage"] > 0.75


@pytest.mark.parametrize(
    ("real", "fake", "k", "words"),
    [
        (torch.zeros(5, 4), torch.zeros(8, 4), 5, "more than 5 images per set, but the real features have 5"),
        (torch.zeros(8, 4), torch.zeros(3, 4), 3, "the fake features have 3: lower quality.nearest_k"),
        (torch.zeros(8, 4), torch.zeros(8, 4), 0, "nearest_k is 0; it must be an integer of at least 1"),
        (torch.zeros(8, 4), torch.zeros(8, 4), 2.5, "nearest_k is 2.5"),
        (torch.zeros(8, 4), torch.zeros(8, 3), 2, "have 4 and 3 values per row"),
        (torch.zeros(8), torch.zeros(8, 4), 2, "the real features have shape (8,); expected (N, D)"),
        (torch.zeros(8, 4), torch.full((8, 4), float("nan")), 2, "the fake features hold NaN or Inf"),
    ],
)
def test_neighbour_metrics_refuse_bad_input_in_one_line(real, fake, k, words):
    one_error_line(lambda: precision_recall_density_coverage(real, fake, k), words)


# --- confidence and classes ----------------------------------------------------------------------


def test_confidence_stats_and_class_histogram():
    probabilities = torch.zeros(4, 10)
    probabilities[0, 3] = 1.0  # sure it is a 3
    probabilities[1, 3], probabilities[1, 5] = 0.95, 0.05
    probabilities[2, 7], probabilities[2, 1] = 0.5, 0.5 - 1e-3  # torn between 7 and 1
    probabilities[2, 0] = 1e-3
    probabilities[3, 9], probabilities[3, 4] = 0.9, 0.1  # exactly at the threshold counts
    stats = confidence_stats(probabilities)
    assert stats["mean_max_softmax"] == pytest.approx((1.0 + 0.95 + 0.5 + 0.9) / 4)
    assert stats["confident_share"] == 0.75
    assert confidence_stats(probabilities, threshold=0.99)["confident_share"] == 0.25
    assert class_histogram(probabilities) == [0, 0, 0, 2, 0, 0, 0, 1, 0, 1]


# --- interpolation paths -------------------------------------------------------------------------


class BrightnessJudge(nn.Module):
    """Fixed logits from a frame's mean brightness m: class 0 if m < 0 else 1, confidently
    (softmax ≈ 0.9996) when |m| > 0.5, else barely (≈ 0.11)."""

    def forward(self, x):
        brightness = x.flatten(1).mean(1)
        logits = torch.zeros(len(x), 10)
        logits[torch.arange(len(x)), (brightness >= 0).long()] = torch.where(
            brightness.abs() > 0.5, 10.0, 0.1
        )
        return logits


def test_interpolation_row_metrics_on_a_hand_built_grid():
    levels = [
        [-1.0] * 5,  # stays put
        [-1.0, -1.0, 1.0, 1.0, 1.0],  # one jump
        [-1.0, -0.5, 0.0, 0.5, 1.0],  # even steps, a blurry middle
    ]
    grid = torch.tensor(levels)[:, :, None, None, None].expand(3, 5, 1, 28, 28)
    rows = interpolation_row_metrics(grid, BrightnessJudge())
    assert [row["row"] for row in rows] == [0, 1, 2]
    still, jump, even = rows
    assert still == {
        "row": 0,
        "mean_step": 0.0,
        "max_step": 0.0,
        "max_over_mean": 1.0,
        "on_manifold_rate": 1.0,
        "label_changes": 0,
    }
    assert jump["mean_step"] == pytest.approx(0.5) and jump["max_step"] == pytest.approx(2.0)
    assert jump["max_over_mean"] == pytest.approx(4.0)  # steps - 1: all the change in one step
    assert jump["on_manifold_rate"] == 1.0 and jump["label_changes"] == 1
    assert even["mean_step"] == pytest.approx(0.5) and even["max_over_mean"] == pytest.approx(1.0)
    assert even["on_manifold_rate"] == pytest.approx(0.4) and even["label_changes"] == 1


def test_interpolation_row_metrics_refuses_a_flat_batch():
    with pytest.raises(DiagnosticsError, match="rows, steps"):
        interpolation_row_metrics(torch.zeros(6, 1, 28, 28), BrightnessJudge())


# --- the quality table ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DigitClassifier().eval()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_judge_images_batches_without_changing_the_result(classifier):
    x = images(7, 0)
    whole, batched = judge_images(classifier, x), judge_images(classifier, x, batch_size=3)
    assert whole.features.shape == (7, 128) and whole.features.dtype == torch.float64
    assert whole.probabilities.shape == (7, 10)
    assert torch.allclose(whole.probabilities.sum(1), torch.ones(7))
    # Float rounding only: kernels differ with the batch size on some CPUs (AVX2-only ones).
    torch.testing.assert_close(whole.features, batched.features, rtol=0, atol=1e-5)


def test_sample_quality_rows(classifier):
    rows = sample_quality_rows(classifier, images(20, 1), images(30, 2), images(25, 3), seed=0)
    assert [row["set"] for row in rows] == [
        "samples",
        "real train (floor)",
        "uniform noise (ceiling)",
        "real held-out",
    ]
    assert all(list(row) == QUALITY_COLUMNS for row in rows)
    assert [row["n"] for row in rows] == [20, 20, 20, 25]
    for metric in ("frechet_distance", *NEIGHBOUR_METRICS):
        assert [row[metric] is None for row in rows] == [False, False, False, True], metric
    assert all(row["frechet_distance"] >= 0 for row in rows[:3])
    assert all(0 <= row[share] <= 1 for row in rows[:3] for share in ("precision", "recall", "coverage"))
    assert all(sum(row[f"class_{d}"] for d in range(10)) == row["n"] for row in rows)
    assert rows == sample_quality_rows(classifier, images(20, 1), images(30, 2), images(25, 3), seed=0)
    # Fewer training digits than samples: all of them, and n says how many.
    few = sample_quality_rows(classifier, images(20, 1), images(8, 2), images(25, 3))
    assert few[1]["n"] == 8


def test_sample_quality_rows_with_a_judge_function():
    """A judge that sees only the mean brightness: the uniform-noise ceiling is as far as the
    samples, which are noise too, and the real-train floor is close to the reference."""

    def judge(x):
        brightness = x.flatten(1).mean(1, keepdim=True).double()
        probabilities = torch.zeros(len(x), 10)
        probabilities[:, 2] = 1.0
        return Judgement(torch.cat([brightness, brightness.pow(2)], 1), probabilities)

    real = torch.full((40, 1, 28, 28), -0.8) + 0.01 * images(40, 4)
    rows = sample_quality_rows(judge, images(30, 5), real, real + 0.001)
    distances = {row["set"]: row["frechet_distance"] for row in rows}
    assert distances["real train (floor)"] < 1e-4 < distances["samples"]
    assert rows[0]["class_2"] == 30 and rows[0]["confident_share"] == 1.0


FEATURE_PIXELS = 8


def pixel_judge(x: torch.Tensor) -> Judgement:
    """A judge whose features are an image's first 8 pixels, sure of the class given by which of
    the first four is brightest."""
    features = x.flatten(1)[:, :FEATURE_PIXELS].double()
    probabilities = torch.zeros(len(x), 10)
    probabilities[torch.arange(len(x)), features[:, :4].argmax(1)] = 1.0
    return Judgement(features, probabilities)


def pixel_digits(per_class: int, spread: float, generator) -> torch.Tensor:
    """Images whose first 8 pixels (what pixel_judge sees) cluster around one centre per class 0-3."""
    centres = 0.8 * torch.eye(4, FEATURE_PIXELS, dtype=torch.float64)
    features = clusters(centres, per_class, spread, generator)
    images = torch.zeros(len(features), 1, 28, 28)
    images.view(len(features), -1)[:, :FEATURE_PIXELS] = features.float()
    return images


def test_only_recall_and_coverage_see_samples_without_variety():
    """Samples that draw each digit as the same prototype: every class equally often, every sample a
    clear digit, and a Fréchet distance below the real-data floor, since the prototypes sit at the
    class means. Precision is 1 and recall near 0, where real training digits score high on both."""
    generator = torch.Generator().manual_seed(0)
    train, heldout = pixel_digits(50, 0.05, generator), pixel_digits(50, 0.05, generator)
    prototypes = pixel_digits(15, 0.005, generator)
    samples, floor, _, _ = sample_quality_rows(pixel_judge, prototypes, train, heldout, nearest_k=5)
    assert [samples[f"class_{digit}"] for digit in range(4)] == [15, 15, 15, 15]
    assert samples["confident_share"] == floor["confident_share"] == 1.0
    assert samples["frechet_distance"] < floor["frechet_distance"]
    assert samples["precision"] == 1.0 and samples["recall"] < 0.1
    assert floor["precision"] > 0.8 and floor["recall"] > 0.8
    # Crowded at the class centres, where real balls overlap most.
    assert samples["density"] > 2 * floor["density"]


def test_sample_quality_rows_refuse_a_nearest_k_before_judging_anything():
    def judge(x):
        raise AssertionError("judged before the sizes were checked")

    with pytest.raises(DiagnosticsError, match="nearest_k = 25 .* the held-out digits have 25"):
        sample_quality_rows(judge, images(30, 1), images(30, 2), images(25, 3), nearest_k=25)


def test_quality_csv_and_json(classifier, tmp_path):
    rows = sample_quality_rows(classifier, images(10, 1), images(12, 2), images(9, 3))
    write_csv(rows, tmp_path / "quality.csv")
    with open(tmp_path / "quality.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["set"] for row in table] == [row["set"] for row in rows]
    assert list(table[0]) == QUALITY_COLUMNS
    assert all(table[-1][metric] == "" for metric in ("frechet_distance", *NEIGHBOUR_METRICS))
    assert float(table[0]["recall"]) == rows[0]["recall"]
    assert float(table[0]["frechet_distance"]) == pytest.approx(rows[0]["frechet_distance"])
    write_json({"checkpoint": "model.pt", "seed": 0, "rows": rows}, tmp_path / "quality.json")
    document = json.loads((tmp_path / "quality.json").read_text())
    assert document == {"checkpoint": "model.pt", "seed": 0, "rows": rows}


# --- figures: what they draw, read back from matplotlib ---------------------------------------------


def bar_heights(axes) -> list[float]:
    return [patch.get_height() for patch in axes.patches]


def test_sample_quality_figure_draws_the_table_from_rows_and_from_the_csv(classifier, tmp_path):
    rows = sample_quality_rows(classifier, images(10, 1), images(12, 2), images(9, 3))
    write_csv(rows, tmp_path / "quality.csv")
    with open(tmp_path / "quality.csv", newline="") as handle:
        from_csv = list(csv.DictReader(handle))
    scored = [row for row in rows if row["frechet_distance"] is not None]
    for table in (rows, from_csv):
        distances, neighbours, classes = sample_quality_figure(table).axes
        assert bar_heights(distances) == pytest.approx([row["frechet_distance"] for row in scored])
        assert [label.get_text() for label in distances.get_xticklabels()] == [row["set"] for row in scored]
        # One bar per (set, metric), set by set.
        expected = [row[metric] for row in scored for metric in NEIGHBOUR_METRICS]
        assert bar_heights(neighbours) == pytest.approx(expected)
        # The samples' and the held-out digits' class shares, each summing to one.
        shares = bar_heights(classes)
        assert (
            len(shares) == 20
            and sum(shares[:10]) == pytest.approx(1)
            and sum(shares[10:]) == pytest.approx(1)
        )
        assert shares[:10] == pytest.approx([rows[0][f"class_{d}"] / rows[0]["n"] for d in range(10)])
    plot_sample_quality(rows, tmp_path / "quality.png")
    assert Image.open(tmp_path / "quality.png").size[0] > 1000


def test_interpolation_metrics_figure_draws_each_variants_mean_and_rows(tmp_path):
    grid = torch.linspace(-1, 1, 5)[None, :, None, None, None].expand(2, 5, 1, 28, 28)
    # The second variant's paths take half the steps of the first's.
    scales = {"ddpm lerp independent": 1.0, "ddim slerp": 0.5}
    rows = [
        {"variant": variant, **row}
        for variant, scale in scales.items()
        for row in interpolation_row_metrics(grid * scale, BrightnessJudge())
    ]
    mean_step = interpolation_metrics_figure(rows).axes[0]
    assert mean_step.get_title() == "mean step (pixel RMSE)"
    by_variant = [[r["mean_step"] for r in rows if r["variant"] == variant] for variant in scales]
    assert bar_heights(mean_step) == pytest.approx([sum(v) / len(v) for v in by_variant])
    for line, values in zip(mean_step.get_lines(), by_variant, strict=True):
        assert line.get_ydata().tolist() == pytest.approx(values)
    assert bar_heights(mean_step)[1] == pytest.approx(bar_heights(mean_step)[0] / 2)


def test_ddim_fidelity_figure_draws_both_clippings_against_their_reference():
    rows = [
        {"num_steps": s, "clip_x0": clip, "rmse_to_reference": (2 if clip else 1) / s if s < 1000 else 0.0,
         "seconds": s / 100}
        for clip in (False, True)
        for s in (1000, 10, 50, 250)
    ]  # fmt: skip
    figure = ddim_fidelity_figure(rows)
    errors = figure.axes[0]
    drawn = {line.get_label(): line.get_xydata().tolist() for line in errors.get_lines()}
    assert drawn == {
        "RMSE, not clipped": [[10, 0.1], [50, 0.02], [250, 0.004]],
        "RMSE, x0 clipped": [[10, 0.2], [50, 0.04], [250, 0.008]],
    }
    assert errors.get_yscale() == "log" and errors.get_title() == "DDIM: fewer steps vs the S = 1000 grid"
    seconds = {line.get_label(): line.get_ydata().tolist() for line in figure.axes[1].get_lines()}
    assert seconds["wall time, not clipped"] == [0.1, 0.5, 2.5, 10.0]


def test_timestep_loss_figure_is_the_originals_bar_chart():
    rows = [
        {"bucket": b, "t_start": 100 * b, "t_end": 100 * b + 99, "mse": 0.1 / (b + 1), "std_error": 0.01}
        for b in range(10)
    ]
    axes = timestep_loss_figure(rows).axes[0]
    assert axes.get_title() == "Noise-prediction error vs timestep"
    assert axes.get_ylabel() == "MSE (ε-prediction error)" and axes.get_xlabel() == "timestep t"
    assert [label.get_text() for label in axes.get_xticklabels()][:2] == ["0-99", "100-199"]
    assert bar_heights(axes) == pytest.approx([0.1 / (b + 1) for b in range(10)])


def tiny_process(timesteps: int = 20) -> DiffusionProcess:
    return DiffusionProcess(tiny_unet(zero_output=True), timesteps)


def test_drawn_samples_at_eta_0_are_the_ddim_map_of_the_seeded_noise():
    diffusion = tiny_process()
    noise = torch.randn((5, 1, 28, 28), generator=torch.Generator().manual_seed(4))
    drawn = draw_samples(diffusion, 5, Sampler("ddim", 6), batch_size=2, seed=4)
    assert torch.allclose(drawn, diffusion.sample_ddim(noise, 6), atol=1e-6)
    assert torch.equal(drawn, draw_samples(diffusion, 5, Sampler("ddim", 6), batch_size=5, seed=4))


def test_drawn_samples_at_eta_1_and_every_step_are_ddpm_samples():
    """η = 1 over all T steps is DDPM's ancestral sampler with σ_t² = β̃_t, step noise included
    (x̂_0 unclipped: DDIM, as diffusers' by default, does not derive ε̂ again from a clipped x̂_0)."""
    diffusion, unclipped = tiny_process(), SamplingOptions(clip_x0=False)
    noise = torch.randn((3, 1, 28, 28), generator=torch.Generator().manual_seed(5))
    ddpm = diffusion.sample(noise, generator=torch.Generator().manual_seed(5), options=unclipped)

    def drawn(eta: float) -> torch.Tensor:
        return draw_samples(diffusion, 3, Sampler("ddim", 20, eta, options=unclipped), batch_size=3, seed=5)

    torch.testing.assert_close(drawn(1.0), ddpm, rtol=0, atol=1e-4)
    assert torch.equal(drawn(1.0), drawn(1.0))
    assert (drawn(1.0) - drawn(0.0)).abs().max() > 0.1
