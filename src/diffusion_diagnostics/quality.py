"""Sample quality and interpolation smoothness, judged by the digit classifier (classifier.py).

Fréchet distance: between Gaussians fitted to the classifier's penultimate features of two image
sets, as FID does with Inception features. Its absolute value means little; it is read against a
floor (real training digits, which differ from the held-out ones only by sampling) and a ceiling
(uniform noise), measured in the same run with the same number of images, because the distance
of finite samples is biased upward by an amount that depends on N.

Precision, recall, density and coverage: in the same feature space, whether samples fall where
real digits lie and whether they reach all of it, from k-nearest-neighbour balls (see below).
They separate what the Fréchet distance mixes: a model that draws only good 1s has high precision
and low recall, and the judge's confidence cannot show it either, since every sample is a clear digit.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .decoding import Sampler, decode
from .diffusion import DiffusionProcess
from .errors import DiagnosticsError
from .runtime import model_device

CONFIDENCE = 0.9
NEAREST_K = 5  # as Naeem et al. 2020 recommend; Kynkäänniemi et al. 2019 used 3
NEIGHBOUR_METRICS = ("precision", "recall", "density", "coverage")
# What distances_to measures, in its order.
DISTANCES = ("frechet_distance", "kid", "kid_std", *NEIGHBOUR_METRICS)
QUALITY_COLUMNS = [
    "set",
    "n",
    *DISTANCES,
    "mean_max_softmax",
    "confident_share",
    *(f"class_{digit}" for digit in range(10)),
]


@dataclass
class Judgement:
    """What the classifier makes of an image set: features (N, D) float64 and softmax (N, 10), on CPU."""

    features: torch.Tensor
    probabilities: torch.Tensor


@torch.inference_mode()
def judge_images(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> Judgement:
    """Run ``classifier`` (anything with ``features`` and ``head``, as DigitClassifier) over
    ``images`` in [-1, 1], batch by batch on its device."""
    if images.ndim != 4:
        raise DiagnosticsError(f"images have shape {tuple(images.shape)}; expected (N, 1, 28, 28)")
    device = model_device(classifier)
    features, probabilities = [], []
    for batch in images.split(batch_size):
        batch_features = classifier.features(batch.to(device, torch.float32))
        probabilities.append(classifier.head(batch_features).softmax(1).float().cpu())
        features.append(batch_features.double().cpu())
    return Judgement(torch.cat(features), torch.cat(probabilities))


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix; rounding's tiny negative
    eigenvalues count as zero."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μa - μb‖² + tr(Σa + Σb - 2 (Σa Σb)^½) between Gaussians fitted to rows of ``a`` and ``b``.

    tr((Σa Σb)^½) is computed as Σ √λ over the eigenvalues λ of S Σb S with S = Σa^½: that
    matrix is similar to Σa Σb but symmetric, so eigh applies and no scipy is needed. In float64.
    """
    for name, features in (("first", a), ("second", b)):
        if features.ndim != 2 or len(features) < 2:
            raise DiagnosticsError(
                f"Fréchet distance: the {name} set has shape {tuple(features.shape)}; "
                "expected (N, D) with N ≥ 2 (a covariance needs two rows)"
            )
        if not torch.isfinite(features).all():
            raise DiagnosticsError(f"Fréchet distance: the {name} set holds NaN or Inf features")
    if a.shape[1] != b.shape[1]:
        raise DiagnosticsError(
            f"Fréchet distance: the sets have {a.shape[1]} and {b.shape[1]} features per row; they must match"
        )
    a, b = a.double().cpu(), b.double().cpu()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(cov_a)
    product = root_a @ cov_b @ root_a
    product = (product + product.T) / 2  # symmetric up to rounding; eigh reads only one triangle
    trace_root = torch.linalg.eigvalsh(product).clamp(min=0).sqrt().sum()
    distance = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    # Never below zero in exact arithmetic; identical sets can round to -1e-12.
    return max(0.0, float(distance))


# --- kernel distance (KID) -----------------------------------------------------------------------
#
# Bińkowski et al. 2018, as torch-fidelity computes it: the squared MMD between the two feature sets
# under the cubic polynomial kernel k(x, y) = (x·y / D + 1)³, estimated on KID_SUBSETS random
# subsets of KID_SUBSET_SIZE rows of each set (fewer when a set is smaller), with the within-set sums
# over distinct pairs and the cross sum over all pairs; the mean over the subsets and their standard
# deviation. Unlike the Fréchet distance it is unbiased, so it is comparable between set sizes, and
# it can come out slightly below zero for sets from one distribution.

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def kernel_distance(
    a: torch.Tensor,
    b: torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> dict:
    """KID between rows of ``a`` and ``b``: ``kid`` (the mean over subsets) and ``kid_std`` (their
    standard deviation, numpy's, as torch-fidelity reports it), in float64."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise DiagnosticsError(
            f"kernel distance: the sets have shapes {tuple(a.shape)} and {tuple(b.shape)}; "
            "expected (N, D) and (M, D)"
        )
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise DiagnosticsError(f"kernel distance needs 2 rows in each set, got {len(a)} and {len(b)}")
    a, b = a.double().cpu(), b.double().cpu()
    generator = torch.Generator().manual_seed(seed)
    values = torch.empty(subsets, dtype=torch.float64)
    for i in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:size]]
        y = b[torch.randperm(len(b), generator=generator)[:size]]
        values[i] = _unbiased_mmd2(x, y)
    return {"kid": float(values.mean()), "kid_std": float(values.std(correction=0))}


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m, features = x.shape

    def off_diagonal_sum(matrix):
        return matrix.sum() - matrix.diagonal().sum()

    def kernel(p, q):
        return (p @ q.T / features + 1) ** 3

    within = off_diagonal_sum(kernel(x, x)) + off_diagonal_sum(kernel(y, y))
    return within / (m * (m - 1)) - 2 * kernel(x, y).sum() / (m * m)


# --- precision, recall, density, coverage --------------------------------------------------------
#
# Each point has a k-NN ball: centred on it, with the distance to its k-th nearest neighbour in its
# own set (itself not counted) as radius. The union of the real points' balls estimates where real
# digits lie, the union of the samples' balls where samples lie. With M samples and N real points:
# - precision (Kynkäänniemi et al. 2019): the share of samples inside some real ball; how many
#   samples look like real digits.
# - recall (ibid.): the share of real points inside some sample's ball; how much of the real variety
#   the samples reach.
# - density (Naeem et al. 2020): (1 / kM) Σ_j Σ_i 1[sample j in real ball i], how many real balls
#   hold a sample, on average, over k; about 1 when samples are spread like real points, above 1
#   where they crowd into dense regions. Unlike precision, one outlying real point, whose big ball
#   swallows many samples, adds little.
# - coverage (ibid.): the share of real balls holding at least one sample; recall measured from the
#   real side, so outlying samples with big balls of their own cannot inflate it.
# Balls are open (a point at exactly the radius is outside), as in Naeem et al.'s code: then a set
# scored against itself gets 1 on all four, each ball holding its centre and k - 1 neighbours.
# Kynkäänniemi et al. write a closed ball; the two differ only on exact ties.

# A chunk's distance matrix holds at most this many float64 entries (128 MiB): 10,000 real digits
# against themselves then take 6 chunks instead of one 800 MB matrix.
DISTANCE_CHUNK_ELEMENTS = 2**24


def check_neighbour_counts(nearest_k: int, set_sizes: dict[str, int]) -> None:
    """Refuse a ``nearest_k`` that a set cannot support: a point's k-th neighbour is another point
    of its set, so each set needs more than k. ``set_sizes`` maps a set's name to its size."""
    if isinstance(nearest_k, bool) or not isinstance(nearest_k, numbers.Integral) or nearest_k < 1:
        raise DiagnosticsError(f"nearest_k is {nearest_k!r}; it must be an integer of at least 1")
    for name, size in set_sizes.items():
        if size <= nearest_k:
            raise DiagnosticsError(
                f"precision and recall with nearest_k = {nearest_k} need more than {nearest_k} images "
                f"per set, but {name} have {size}: lower quality.nearest_k or score more images"
            )


def _check_neighbour_features(real: torch.Tensor, fake: torch.Tensor, nearest_k: int) -> None:
    """Two finite (N, D) sets of one width, each with more than ``nearest_k`` rows."""
    for name, features in (("real", real), ("fake", fake)):
        if features.ndim != 2:
            raise DiagnosticsError(
                f"precision and recall: the {name} features have shape {tuple(features.shape)}; "
                "expected (N, D)"
            )
        if not torch.isfinite(features).all():
            raise DiagnosticsError(
                f"precision and recall: the {name} features hold NaN or Inf; check the images and the judge"
            )
    if real.shape[1] != fake.shape[1]:
        raise DiagnosticsError(
            f"precision and recall: the real and fake features have {real.shape[1]} and {fake.shape[1]} "
            "values per row; they must come from the same judge"
        )
    check_neighbour_counts(nearest_k, {"the real features": len(real), "the fake features": len(fake)})


def _row_chunks(rows: int, columns: int) -> Iterator[slice]:
    """Slices of ``rows`` whose distance matrices to ``columns`` points stay within
    DISTANCE_CHUNK_ELEMENTS (one row at least)."""
    step = max(1, DISTANCE_CHUNK_ELEMENTS // max(1, columns))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def kth_neighbour_distances(points: torch.Tensor, nearest_k: int) -> torch.Tensor:
    """Each row's distance to its ``nearest_k``-th nearest other row: the radius of its k-NN ball."""
    radii = torch.empty(len(points), dtype=points.dtype)
    for rows in _row_chunks(len(points), len(points)):
        distances = torch.cdist(points[rows], points)
        # A point is not its own neighbour. Masked by index, not by its zero distance: an exact
        # duplicate still counts as a neighbour, whatever cdist's rounding makes of the diagonal.
        own = torch.arange(rows.start, rows.stop)
        distances[own - rows.start, own] = torch.inf
        # topk (sorted) rather than kthvalue: six times faster on a CPU at 10,000 columns.
        radii[rows] = distances.topk(nearest_k, dim=1, largest=False).values[:, -1]
    return radii


def _share(flags: torch.Tensor) -> float:
    """The share of true flags, as count / total exactly."""
    return int(flags.sum()) / len(flags)


def precision_recall_density_coverage(
    real: torch.Tensor, fake: torch.Tensor, nearest_k: int = NEAREST_K
) -> dict[str, float]:
    """The four k-NN metrics above (keys as NEIGHBOUR_METRICS) of ``fake`` feature rows (M, D)
    against ``real`` ones (N, D), each set with more than ``nearest_k`` rows. In float64, the
    distance matrices built a chunk of real rows at a time."""
    _check_neighbour_features(real, fake, nearest_k)
    real, fake = real.double().cpu(), fake.double().cpu()
    real_radii = kth_neighbour_distances(real, nearest_k)
    fake_radii = kth_neighbour_distances(fake, nearest_k)
    real_balls_per_sample = torch.zeros(len(fake), dtype=torch.int64)
    real_in_a_fake_ball = torch.zeros(len(real), dtype=torch.bool)
    real_ball_holds_a_fake = torch.zeros(len(real), dtype=torch.bool)
    for rows in _row_chunks(len(real), len(fake)):
        distances = torch.cdist(real[rows], fake)
        in_real_ball = distances < real_radii[rows, None]
        real_balls_per_sample += in_real_ball.sum(0)
        real_ball_holds_a_fake[rows] = in_real_ball.any(1)
        real_in_a_fake_ball[rows] = (distances < fake_radii[None, :]).any(1)
    return {
        "precision": _share(real_balls_per_sample > 0),
        "recall": _share(real_in_a_fake_ball),
        "density": int(real_balls_per_sample.sum()) / (nearest_k * len(fake)),
        "coverage": _share(real_ball_holds_a_fake),
    }


def confidence_stats(probabilities: torch.Tensor, threshold: float = CONFIDENCE) -> dict:
    """Mean of each image's top softmax, and the share of images at or above ``threshold``: how
    often the judge sees a clear digit rather than something between classes."""
    top = probabilities.max(1).values
    # Compared in the probabilities' own precision, so a float32 softmax of 0.9 counts at 0.9.
    return {
        "mean_max_softmax": float(top.double().mean()),
        "confident_share": float((top >= threshold).double().mean()),
    }


def class_histogram(probabilities: torch.Tensor) -> list[int]:
    """How many images the judge assigns to each class (its argmax)."""
    return torch.bincount(probabilities.argmax(1), minlength=probabilities.shape[1]).tolist()


def sample_quality_rows(
    judge: nn.Module | Callable[[torch.Tensor], Judgement],
    samples: torch.Tensor,
    train_images: torch.Tensor,
    heldout_images: torch.Tensor,
    *,
    seed: int = 0,
    threshold: float = CONFIDENCE,
    nearest_k: int = NEAREST_K,
) -> list[dict]:
    """One row per image set: the samples, real training digits (floor), uniform noise
    (ceiling) and the held-out digits (the reference, so no distances of their own).

    Each set's Fréchet distance and k-NN metrics are measured against the held-out digits. The
    floor and ceiling have as many images as the samples (the floor all training images if
    there are fewer; its ``n`` says how many), drawn from a generator seeded with ``seed``.
    ``judge`` is a classifier for :func:`judge_images`, or a function from images to a Judgement.
    """
    judged = judge if not isinstance(judge, nn.Module) else lambda images: judge_images(judge, images)
    n = len(samples)
    if n < 2:
        raise DiagnosticsError(f"sample quality needs at least 2 samples, got {n}")
    generator = torch.Generator().manual_seed(seed)
    floor = train_images[torch.randperm(len(train_images), generator=generator)[:n]]
    ceiling = torch.rand((n, *samples.shape[1:]), generator=generator) * 2 - 1
    # Before any image is judged, so a nearest_k too large for a set fails at once.
    check_neighbour_counts(
        nearest_k,
        {
            "the samples": n,
            "the training digits (floor)": len(floor),
            "the held-out digits": len(heldout_images),
        },
    )
    reference = judged(heldout_images)
    rows = [
        _quality_row(name, judged(images), reference, threshold, nearest_k)
        for name, images in (
            ("samples", samples),
            ("real train (floor)", floor),
            ("uniform noise (ceiling)", ceiling),
        )
    ]
    rows.append(_quality_row("real held-out", reference, None, threshold, nearest_k))
    return rows


def distances_to(
    reference: Judgement, judgement: Judgement, nearest_k: int = NEAREST_K, seed: int = 0
) -> dict:
    """How far a judged set is from the judged ``reference`` in the judge's features: the Fréchet
    distance, KID (subsets drawn from ``seed``) and precision, recall, density and coverage."""
    return {
        "frechet_distance": frechet_distance(judgement.features, reference.features),
        **kernel_distance(judgement.features, reference.features, seed=seed),
        **precision_recall_density_coverage(reference.features, judgement.features, nearest_k),
    }


def _quality_row(
    name: str, judgement: Judgement, reference: Judgement | None, threshold: float, nearest_k: int
) -> dict:
    """A table row (QUALITY_COLUMNS) for one judged set; distances to ``reference`` empty when
    there is none (the reference's own row)."""
    if reference is None:
        distances = dict.fromkeys(DISTANCES)
    else:
        distances = distances_to(reference, judgement, nearest_k)
    return {
        "set": name,
        "n": len(judgement.probabilities),
        **distances,
        **confidence_stats(judgement.probabilities, threshold),
        **{f"class_{digit}": count for digit, count in enumerate(class_histogram(judgement.probabilities))},
    }


def draw_samples(
    diffusion: DiffusionProcess, num_samples: int, sampler: Sampler, batch_size: int, seed: int
) -> torch.Tensor:
    """``num_samples`` samples decoded by ``sampler``, on the CPU.

    The starting noise comes from a CPU generator seeded with ``seed``: the same on every machine
    and device. A stochastic sampler's step noise (DDIM's at η > 0: 1 gives every step the
    posterior's variance over the strided schedule, DDPM's at S = T, x̂_0 unclipped) comes from a
    generator on the sampling device, also seeded with ``seed``, drawn batch after batch, so it
    depends on the device and on ``batch_size``.
    """
    noise = torch.randn((num_samples, *diffusion.sample_shape), generator=torch.Generator().manual_seed(seed))
    step_noise = None if sampler.deterministic else torch.Generator(model_device(diffusion)).manual_seed(seed)
    return decode(diffusion, sampler, noise, batch_size, step_noise)


# --- interpolation paths -------------------------------------------------------------------------
#
# For a researcher comparing interpolation methods, per grid row (one path between two endpoints):
# - mean_step: the average pixel RMSE between neighbouring frames; how far the path travels per
#   step. Low is a gentle morph, but a path that stays put (all frames alike) is low too.
# - max_step: the largest single step; where a path jumps from one digit to another.
# - max_over_mean: max_step / mean_step, scale-free. Near 1 the change is spread evenly over the
#   path; a path that holds one digit and then snaps to the other has one big step, and the value
#   approaches steps - 1. 1.0 for a path that does not change at all.
# - on_manifold_rate: share of the path's frames that the judge calls a clear digit (top softmax ≥
#   threshold). Low means the middle of the path leaves the data: blends, ghosts, blobs.
# - label_changes: how often the judge's class changes between neighbours. 1 for a path from one
#   digit class to another that passes no third; more means it wanders through other digits.


@torch.inference_mode()
def interpolation_row_metrics(
    images: torch.Tensor, classifier: nn.Module, threshold: float = CONFIDENCE
) -> list[dict]:
    """One dict per row of a grid ``(n_rows, steps, C, H, W)`` in [-1, 1]: the metrics above."""
    if images.ndim != 5 or images.shape[1] < 2:
        raise DiagnosticsError(
            f"an interpolation grid has shape (rows, steps ≥ 2, C, H, W); got {tuple(images.shape)}"
        )
    n_rows, steps = images.shape[:2]
    frames = images.double().cpu()
    step_sizes = (frames[:, 1:] - frames[:, :-1]).pow(2).flatten(2).mean(2).sqrt()
    device = model_device(classifier)
    logits = torch.cat(
        [classifier(batch.to(device, torch.float32)).cpu() for batch in images.flatten(0, 1).split(500)]
    )
    probabilities = logits.softmax(1).reshape(n_rows, steps, -1)
    top, labels = probabilities.max(2)
    rows = []
    for row in range(n_rows):
        mean_step, max_step = float(step_sizes[row].mean()), float(step_sizes[row].max())
        rows.append(
            {
                "row": row,
                "mean_step": mean_step,
                "max_step": max_step,
                "max_over_mean": max_step / mean_step if mean_step > 0 else 1.0,
                "on_manifold_rate": float((top[row] >= threshold).double().mean()),
                "label_changes": int((labels[row, 1:] != labels[row, :-1]).sum()),
            }
        )
    return rows
