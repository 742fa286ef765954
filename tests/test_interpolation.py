"""Noise interpolation (lerp / slerp), decoded grids, the PNG, and the original utility's interface."""

from __future__ import annotations

import inspect
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

import diffusion_diagnostics
from diffusion_diagnostics import (
    DiagnosticsError,
    DiffusionProcess,
    Sampler,
    interpolate,
    interpolation_grid,
    save_grid,
)
from diffusion_diagnostics.diffusion import SamplingOptions
from diffusion_diagnostics.grids import load_endpoints, load_grid_images, save_grid_images, tile_rows
from diffusion_diagnostics.real_digits import interpolate_real, select_pairs

from doubles import one_error_line, tiny_unet

T = 10
PAD = 2  # torchvision make_grid's default padding, which save_image uses


@pytest.fixture(scope="module")
def diffusion() -> DiffusionProcess:
    return DiffusionProcess(tiny_unet(), timesteps=T, beta_start=1e-3, beta_end=0.2)


def endpoints(n: int = 3, shape=(1, 4, 4), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=generator), torch.randn(n, *shape, generator=generator)


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size  # (width, height)


# --- interpolate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_interpolate_shape_and_exact_endpoints(method):
    z0, z1 = endpoints(3, (2, 4, 5))
    grid = interpolate(z0, z1, 6, method)
    assert grid.shape == (3, 6, 2, 4, 5)
    assert torch.equal(grid[:, 0], z0)
    assert torch.equal(grid[:, -1], z1)
    assert not torch.allclose(grid[:, 1], z0)


def test_lerp_is_the_straight_line():
    z0, z1 = endpoints()
    grid = interpolate(z0, z1, 5, "lerp")
    torch.testing.assert_close(grid[:, 2], (z0 + z1) / 2, rtol=0, atol=1e-7)
    for j in range(5):
        alpha = j / 4
        expected = (1 - alpha) * z0.double() + alpha * z1.double()
        torch.testing.assert_close(grid[:, j].double(), expected, rtol=1e-6, atol=1e-6)


def test_slerp_matches_the_closed_form():
    z0, z1 = endpoints(4)
    steps = 7
    grid = interpolate(z0, z1, steps, "slerp")
    a, b = z0.flatten(1).double(), z1.flatten(1).double()
    theta = torch.arccos((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)))[:, None]
    for j in range(steps):
        alpha = j / (steps - 1)
        expected = (torch.sin((1 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / torch.sin(theta)
        torch.testing.assert_close(grid[:, j].flatten(1).double(), expected, rtol=1e-5, atol=1e-5)


def test_slerp_keeps_the_norm_of_equal_norm_endpoints():
    z0, z1 = endpoints(4, (1, 8, 8))
    z1 = z1 * (z0.flatten(1).norm(dim=1) / z1.flatten(1).norm(dim=1)).reshape(-1, 1, 1, 1)
    norms = interpolate(z0, z1, 9, "slerp").flatten(2).norm(dim=2)  # (n, steps)
    torch.testing.assert_close(norms, norms[:, :1].expand_as(norms), rtol=1e-5, atol=0)
    # lerp does not: its midpoint is shorter (the point of using slerp for Gaussian noise).
    lerp_mid = interpolate(z0, z1, 9, "lerp")[:, 4].flatten(1).norm(dim=1)
    assert (lerp_mid < 0.95 * norms[:, 4]).all()


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_slerp_of_parallel_endpoints_is_lerp(scale):
    z0, _ = endpoints(2)
    z1 = scale * z0
    slerped = interpolate(z0, z1, 5, "slerp")
    assert torch.isfinite(slerped).all()
    torch.testing.assert_close(slerped, interpolate(z0, z1, 5, "lerp"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("z1_shape", "steps", "method", "match"),
    [
        ((3, 1, 4, 4), 1, "lerp", "at least 2 steps"),
        ((3, 1, 4, 4), 0, "slerp", "at least 2 steps"),
        ((2, 1, 4, 4), 5, "lerp", "differ in shape"),
        ((3, 1, 4, 5), 5, "slerp", "differ in shape"),
        ((3, 1, 4, 4), 5, "cubic", "interpolation 'cubic' is unknown"),
    ],
)
def test_interpolate_rejects_bad_input(z1_shape, steps, method, match):
    z0 = torch.zeros(3, 1, 4, 4)
    with pytest.raises(DiagnosticsError, match=match):
        interpolate(z0, torch.ones(z1_shape), steps, method)


# --- decoded grids -------------------------------------------------------------------------------


def test_interpolation_grid_shapes_and_range(diffusion):
    """DDPM clips x̂_0 as the model's clip_sample (true here) says, DDIM only when asked: the last
    step returns x̂_0, so a clipped grid stays in [-1, 1] and this tiny random network's unclipped
    one does not."""
    z0, z1 = endpoints(2, (1, 28, 28))
    for sampler, clipped in (
        (Sampler("ddpm"), True),
        (Sampler("ddim", 5), False),
        (Sampler("ddim", 5, options=SamplingOptions(clip_x0=True)), True),
    ):
        images = interpolation_grid(
            diffusion, z0, z1, 3, sampler, generator=torch.Generator().manual_seed(0), progress=False
        )
        assert images.shape == (2, 3, 1, 28, 28)
        assert (images.abs().max() <= 1.0) == clipped, sampler
        assert images.std() > 0


def test_ddim_grid_is_independent_of_batch_size(diffusion):
    """DDIM with η = 0 decodes each latent on its own; how they are batched must not matter.

    Batches of 1, 2, 4 (split 4 + 2) and 6 give the same grid to float rounding, not always bit
    for bit: oneDNN and BLAS pick their kernels by batch size and CPU (on an Intel Xeon with AMX
    batches 2, 4 and 6 agreed exactly, on an AVX2-only AMD EPYC they did not), and a single row
    takes BLAS's matrix-vector path in the time MLP. A decoding that mixed latents across a batch
    would be off by far more than the tolerance.
    """
    z0, z1 = endpoints(2, (1, 28, 28))
    grids = {
        batch_size: interpolation_grid(
            diffusion, z0, z1, 3, Sampler("ddim", 5), batch_size=batch_size, progress=False
        )
        for batch_size in (1, 2, 4, 6)
    }
    for batch_size in (1, 2, 4):
        torch.testing.assert_close(grids[batch_size], grids[6], rtol=0, atol=1e-5, msg=str(batch_size))
    # Row i, column 0 is z0[i] decoded, the last column z1[i] decoded.
    torch.testing.assert_close(grids[6][:, 0], diffusion.sample_ddim(z0, 5), rtol=0, atol=1e-5)
    torch.testing.assert_close(grids[6][:, 2], diffusion.sample_ddim(z1, 5), rtol=0, atol=1e-5)


def test_ddpm_grid_follows_its_generator(diffusion):
    z0, z1 = endpoints(1, (1, 28, 28))

    def grid(seed):
        return interpolation_grid(
            diffusion, z0, z1, steps=2, generator=torch.Generator().manual_seed(seed), progress=False
        )

    assert torch.equal(grid(1), grid(1))
    assert not torch.equal(grid(1), grid(2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampler": Sampler("dpm-fast")}, "sampler 'dpm-fast' is neither"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_interpolation_grid_rejects_bad_input(diffusion, kwargs, match):
    z0, z1 = endpoints(1, (1, 28, 28))
    with pytest.raises(DiagnosticsError, match=match):
        interpolation_grid(diffusion, z0, z1, steps=2, progress=False, **kwargs)


# --- the PNG -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "steps"), [(2, 3), (1, 7), (3, 2)])
def test_save_grid_pixel_layout(tmp_path, n, steps):
    # Tile k is a constant image of value v_k, so every tile can be found in the PNG.
    values = torch.linspace(-1, 1, n * steps)
    grid = values.reshape(n, steps, 1, 1, 1).expand(-1, -1, 1, 28, 28).clone()
    path = tmp_path / "sub" / "grid.png"

    returned = save_grid(grid, path)

    assert returned == str(path)
    assert png_size(path) == (steps * (28 + PAD) + PAD, n * (28 + PAD) + PAD)
    with Image.open(path) as image:
        pixels = torch.from_numpy(np.array(image.convert("L"))).long()  # (height, width)
    for k, value in enumerate(values.tolist()):
        row, column = divmod(k, steps)
        top, left = PAD + row * (28 + PAD), PAD + column * (28 + PAD)
        tile = pixels[top : top + 28, left : left + 28]
        expected = int((value * 0.5 + 0.5) * 255 + 0.5)
        assert (tile - expected).abs().max() <= 1, (k, tile.unique(), expected)
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"], "no partial files left"


@pytest.mark.parametrize(("n", "expected_rows"), [(3, 1), (10, 1), (12, 2), (100, 10), (130, 10)])
def test_tile_rows_keeps_every_image_up_to_the_limit_and_pads_with_background(n, expected_rows):
    images = torch.linspace(-0.5, 0.5, n).reshape(n, 1, 1, 1).expand(n, 1, 2, 2)
    grid = tile_rows(images, columns=10, max_rows=10)
    assert grid.shape == (expected_rows, 10, 1, 2, 2)
    shown = min(n, 100)
    flat = grid.flatten(0, 1)
    assert torch.equal(flat[:shown], images[:shown])
    assert torch.all(flat[shown:] == -1)


def test_save_grid_clamps_out_of_range_values(tmp_path):
    grid = torch.full((1, 2, 1, 28, 28), 5.0)
    grid[0, 1] = -5.0
    save_grid(grid, tmp_path / "g.png")
    with pytest.raises(DiagnosticsError, match=r"a grid has shape \(rows, columns, C, H, W\)"):
        save_grid(grid[0], tmp_path / "flat.png")
    with Image.open(tmp_path / "g.png") as image:
        gray = image.convert("L")
        assert gray.getpixel((PAD + 5, PAD + 5)) == 255
        assert gray.getpixel((PAD + 30 + 5, PAD + 5)) == 0


# --- the original utility's interface ------------------------------------------------------------

ORIGINAL = [
    "per_timestep_loss",
    "sample_from_xt",
    "interpolate_noise_and_generate",
    "ddim_sample_from_xt",
    "interpolate_noise_and_generate_ddim",
]


def defaults(function) -> dict:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def test_original_functions_are_exported_with_their_defaults():
    for name in ORIGINAL:
        assert callable(getattr(diffusion_diagnostics, name)), name
        assert name in diffusion_diagnostics.__all__, name
    package = diffusion_diagnostics
    assert defaults(package.per_timestep_loss) == {"num_batches": 10, "buckets": 10, "device": None}
    assert defaults(package.interpolate_noise_and_generate) == {
        "n": 8,
        "steps": 7,
        "save_path": "interp.png",
        "device": None,
        "interpolation": "lerp",
        "batch_size": 72,
        "generator": None,
    }
    # The original's: all 1000 DDIM steps of its schedule, and the same file name as the DDPM grid.
    assert defaults(package.interpolate_noise_and_generate_ddim) == {
        "n": 8,
        "steps": 7,
        "ddim_steps": 1000,
        "eta": 0.0,
        "save_path": "interp.png",
        "device": None,
        "interpolation": "lerp",
        "batch_size": 72,
        "generator": None,
    }
    assert defaults(package.sample_from_xt) == {"device": None, "generator": None}
    assert defaults(package.ddim_sample_from_xt) == {
        "ddim_steps": 1000,
        "eta": 0.0,
        "device": None,
        "generator": None,
    }
    # The original positional order.
    assert list(inspect.signature(package.interpolate_noise_and_generate).parameters)[:5] == [
        "diffusion",
        "n",
        "steps",
        "save_path",
        "device",
    ]
    assert list(inspect.signature(package.interpolate_noise_and_generate_ddim).parameters)[:7] == [
        "diffusion",
        "n",
        "steps",
        "ddim_steps",
        "eta",
        "save_path",
        "device",
    ]


def test_interpolate_noise_and_generate_writes_and_returns_the_grid(diffusion, tmp_path, monkeypatch):
    path = tmp_path / "ddpm.png"
    returned = diffusion_diagnostics.interpolate_noise_and_generate(diffusion, 2, 3, str(path))
    assert returned == str(path)
    assert png_size(path) == (3 * 30 + 2, 2 * 30 + 2)

    monkeypatch.chdir(tmp_path)
    assert diffusion_diagnostics.interpolate_noise_and_generate(diffusion, n=1, steps=2) == "interp.png"
    assert png_size(tmp_path / "interp.png") == (2 * 30 + 2, 1 * 30 + 2)


def test_interpolate_noise_and_generate_ddim_writes_and_returns_the_grid(diffusion, tmp_path, monkeypatch):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for path in (first, second):
        returned = diffusion_diagnostics.interpolate_noise_and_generate_ddim(
            diffusion, n=2, steps=4, ddim_steps=5, save_path=path, generator=torch.Generator().manual_seed(3)
        )
        assert returned == str(path)
    assert png_size(first) == (4 * 30 + 2, 2 * 30 + 2)
    # Same endpoint generator and η = 0: the same picture, byte for byte.
    assert first.read_bytes() == second.read_bytes()

    monkeypatch.chdir(tmp_path)
    returned = diffusion_diagnostics.interpolate_noise_and_generate_ddim(
        diffusion, n=1, steps=2, ddim_steps=T
    )
    assert returned == "interp.png"
    assert png_size(tmp_path / "interp.png") == (2 * 30 + 2, 1 * 30 + 2)


def test_sample_from_xt_and_ddim_sample_from_xt(diffusion):
    x_t = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    ddpm = [
        diffusion_diagnostics.sample_from_xt(diffusion, x_t, generator=torch.Generator().manual_seed(1))
        for _ in range(2)
    ]
    assert ddpm[0].shape == x_t.shape
    assert torch.equal(ddpm[0], ddpm[1])
    ddim = diffusion_diagnostics.ddim_sample_from_xt(diffusion, x_t, ddim_steps=5, device="cpu")
    assert torch.equal(ddim, diffusion.sample_ddim(x_t, 5))
    assert not torch.equal(ddim, ddpm[0])


def test_per_timestep_loss_runs_on_the_tiny_unet(diffusion):
    data = [torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(3)]
    loss = diffusion_diagnostics.per_timestep_loss(diffusion, data, num_batches=3, buckets=4)
    assert loss.shape == (4,) and torch.isfinite(loss).all() and (loss > 0).all()


# --- shared per-step noise, real digits ------------------------------------------------------------


def test_shared_noise_grid_rows_differ_only_through_their_start(diffusion):
    """Equal endpoints make every frame of a row start from the same noise: with shared per-step
    noise the row is one image repeated; with independent noise the frames differ."""
    z0, _ = endpoints(2, (1, 28, 28))

    def grid(shared, batch_size):
        return interpolation_grid(
            diffusion,
            z0,
            z0.clone(),
            3,
            Sampler("ddpm"),
            batch_size=batch_size,
            progress=False,
            generator=torch.Generator().manual_seed(1),
            shared_noise=shared,
        )

    # A batch of 4 is rounded down to whole rows (3), so rows never straddle two batches.
    shared = grid(True, 4)
    assert torch.equal(shared[:, 1:], shared[:, :1].expand(-1, 2, -1, -1, -1))
    assert not torch.equal(shared[0, 0], shared[1, 0])
    independent = grid(False, 4)
    assert (independent[:, 1] - independent[:, 0]).abs().max() > 1e-3


def test_select_pairs_by_class_takes_a_new_image_for_each_use():
    labels = torch.tensor([3, 1, 3, 0, 1, 3])
    assert select_pairs(labels, [[3, 1], [3, 3]], "classes") == ([0, 2], [1, 5])
    assert select_pairs(labels, [[5, 0], [1, 2]], "indices") == ([5, 1], [0, 2])


@pytest.mark.parametrize(
    ("pairs", "select", "match"),
    [
        ([[0, 0]], "classes", "only 1 images of class 0"),
        ([[7, 1]], "classes", "only 0 images of class 7"),
        ([[0, 6]], "indices", "index 6 is outside the held-out split"),
        ([[0, 1]], "labels", "pair selection 'labels' is unknown"),
    ],
)
def test_select_pairs_rejects_what_the_split_cannot_give(pairs, select, match):
    with pytest.raises(DiagnosticsError, match=match):
        select_pairs(torch.tensor([3, 1, 3, 0, 1, 3]), pairs, select)


def test_interpolate_real_rows_start_and_end_with_the_real_digits():
    diffusion = DiffusionProcess(tiny_unet(), timesteps=T, beta_start=1e-3, beta_end=0.2)
    x_a, x_b = endpoints(2, (1, 28, 28), seed=3)
    x_a, x_b = x_a.clamp(-1, 1), x_b.clamp(-1, 1)
    # Clipping asked for is ignored: only the unclipped DDIM map is inverted by DDIM inversion.
    images = interpolate_real(
        diffusion,
        x_a,
        x_b,
        steps=4,
        sampler=Sampler("ddim", T, options=SamplingOptions(clip_x0=True)),
        batch_size=3,
        progress=False,
    )
    rows = images
    assert rows.shape == (2, 6, 1, 28, 28)
    assert torch.equal(rows[:, 0], x_a) and torch.equal(rows[:, -1], x_b)
    assert torch.isfinite(rows).all()
    # The decoded path: the DDIM grid from the inverted noise, so its ends are the reconstructions.
    unclipped = SamplingOptions(clip_x0=False)
    noise = diffusion.ddim_invert(torch.cat([x_a, x_b]), T)
    for column, pair in ((1, noise[:2]), (4, noise[2:])):
        decoded = diffusion.sample_ddim(pair, T, options=unclipped)
        torch.testing.assert_close(rows[:, column], decoded, rtol=0, atol=1e-5)


def test_saved_grid_images_round_trip_and_a_bad_file_names_its_rule(tmp_path):
    images = torch.rand(2, 3, 1, 28, 28) * 2 - 1
    save_grid_images(tmp_path / "grid.pt", images)
    assert torch.equal(load_grid_images(tmp_path / "grid.pt"), images)
    (tmp_path / "bad.pt").write_bytes(b"not a grid")
    (tmp_path / "endpoints.pt").write_bytes((tmp_path / "grid.pt").read_bytes())
    for name, problem in [("bad.pt", "not a readable PyTorch file"), ("missing.pt", "no such file")]:
        message = one_error_line(partial(load_grid_images, tmp_path / name), name, problem)
        assert message.endswith("rerun the interpolation_samples rule")
    with pytest.raises(DiagnosticsError, match="rerun the noise_endpoints rule$"):
        load_endpoints(tmp_path / "endpoints.pt")  # a grid is not an endpoint file
