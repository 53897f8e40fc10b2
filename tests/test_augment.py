"""Batch augmentation: shapes, ranges, reproducibility and the geometry conventions."""

import pytest
import torch
import torch.nn.functional as F

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.training.augment import (
    AugmentConfig,
    affine_matrices,
    augment_batch,
    preset,
    random_affine_matrices,
)

IDENTITY = AugmentConfig(rotation=0.0, scale=0.0, shift=0.0, shear=0.0, elastic=0.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_batch(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=gen(123))


def blob(sigma: float = 3.0) -> torch.Tensor:
    """A centred Gaussian spot, well inside the frame."""
    coords = torch.arange(28, dtype=torch.float32) - 13.5
    g = torch.exp(-coords**2 / (2 * sigma**2))
    return (g[:, None] * g[None, :]).view(1, 1, 28, 28)


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """(n, 2) centre of mass as (row, col) in pixels."""
    coords = torch.arange(28, dtype=torch.float32)
    mass = images.sum(dim=(1, 2, 3))
    rows = (images.sum(dim=(1, 3)) * coords).sum(dim=1) / mass
    cols = (images.sum(dim=(1, 2)) * coords).sum(dim=1) / mass
    return torch.stack([rows, cols], dim=1)


def warp(image: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def fixed(n: int = 1, angle=0.0, scale=1.0, shear=0.0, tx=0.0, ty=0.0) -> torch.Tensor:
    def t(v):
        return torch.full((n,), float(v))

    return affine_matrices(t(angle), t(scale), t(shear), t(tx), t(ty), (28, 28))


@pytest.mark.parametrize("name", ["standard", "elastic"])
def test_shape_dtype_and_range(name):
    images = random_batch()
    out = augment_batch(images, preset(name), gen())
    assert out.shape == images.shape
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_input_is_not_modified():
    images = random_batch()
    before = images.clone()
    augment_batch(images, preset("elastic"), gen())
    assert torch.equal(images, before)


def test_same_seed_same_output_and_global_rng_untouched():
    images = random_batch()
    state = torch.get_rng_state()
    a = augment_batch(images, preset("elastic"), gen(7))
    b = augment_batch(images, preset("elastic"), gen(7))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def test_different_seeds_differ():
    images = random_batch()
    a = augment_batch(images, preset("standard"), gen(1))
    b = augment_batch(images, preset("standard"), gen(2))
    assert not torch.allclose(a, b)


def test_identity_config_returns_input():
    images = random_batch()
    assert torch.allclose(augment_batch(images, IDENTITY, gen()), images, atol=1e-6)
    assert torch.allclose(augment_batch(images, preset("none"), gen()), images, atol=1e-6)
    theta = random_affine_matrices(4, IDENTITY, gen())
    assert torch.allclose(theta, torch.eye(2, 3).expand(4, 2, 3))
    # The resampling path itself is exact up to float32 rounding of the grid.
    assert torch.allclose(warp(images, fixed(n=8)), images, atol=1e-5)


def test_shift_moves_a_pixel_by_exactly_two_pixels():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10, 10] = 1.0
    right = warp(image, fixed(tx=2.0))
    expected = torch.zeros_like(image)
    expected[0, 0, 10, 12] = 1.0
    assert torch.allclose(right, expected, atol=1e-5)
    up = warp(image, fixed(ty=-3.0))  # negative ty: up
    expected = torch.zeros_like(image)
    expected[0, 0, 7, 10] = 1.0
    assert torch.allclose(up, expected, atol=1e-5)


def test_shift_on_a_non_square_image():
    image = torch.zeros(1, 1, 20, 30)
    image[0, 0, 5, 7] = 1.0
    one = torch.ones(1)
    theta = affine_matrices(0 * one, one, 0 * one, 3 * one, 4 * one, (20, 30))
    expected = torch.zeros_like(image)
    expected[0, 0, 9, 10] = 1.0
    assert torch.allclose(warp(image, theta), expected, atol=1e-5)


def test_rotation_by_90_degrees_is_counter_clockwise_like_rot90():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 6:20, 8:11] = 1.0  # an "L": a tall bar ...
    image[0, 0, 17:20, 8:18] = 0.5  # ... and a dimmer foot to the right
    rotated = warp(image, fixed(angle=90.0))
    expected = torch.rot90(image, 1, dims=(-2, -1))
    assert torch.allclose(rotated[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=1e-4)


def test_random_matrices_vary_per_image():
    theta = random_affine_matrices(16, preset("standard"), gen())
    assert theta.shape == (16, 2, 3)
    assert theta.std(dim=0).min() > 0


def test_mass_roughly_preserved_without_zoom():
    config = AugmentConfig(rotation=15.0, scale=0.0, shift=2.0, shear=0.2)
    images = blob().repeat(16, 1, 1, 1)
    out = augment_batch(images, config, gen())
    ratio = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert torch.all((ratio - 1).abs() < 0.1)


def test_elastic_differs_but_keeps_centre_of_mass():
    images = blob().repeat(8, 1, 1, 1)
    plain = augment_batch(images, preset("standard"), gen(3))
    bent = augment_batch(images, preset("elastic"), gen(3))  # same affine draws, plus elastic
    assert (plain - bent).abs().max() > 0.01
    assert torch.all((centre_of_mass(plain) - centre_of_mass(bent)).norm(dim=1) < 1.5)


def test_channels_last_input():
    images = torch.rand(4, 1, 28, 28, generator=gen()).contiguous(
        memory_format=torch.channels_last)
    out = augment_batch(images, preset("elastic"), gen())
    assert out.shape == images.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    reference = augment_batch(images.contiguous(), preset("elastic"), gen())
    assert torch.allclose(out, reference)


def test_presets_and_bad_settings():
    assert preset("standard") == AugmentConfig()
    assert preset("light").rotation == 8.0
    assert preset("elastic").elastic > 0
    with pytest.raises(MnistCnnError, match="unknown augmentation preset"):
        preset("heavy")
    with pytest.raises(MnistCnnError):
        AugmentConfig(scale=1.0)
    with pytest.raises(MnistCnnError):
        AugmentConfig(rotation=-1.0)


def test_training_with_augmentation_leaves_the_data_untouched(tiny_dataset, runtime):
    from mnist_cnn.models.registry import build_model, recipe_for
    from mnist_cnn.training.loop import train

    before = {name: (split.images.clone(), split.labels.clone())
              for name, split in (("train", tiny_dataset.train), ("val", tiny_dataset.val),
                                  ("test", tiny_dataset.test))}
    recipe = recipe_for("fast").replace(epochs=1, batch_size=50, augment="standard",
                                        precision="fp32")
    histories = []
    for _ in range(2):  # the same seed augments identically
        result = train(build_model(recipe), tiny_dataset, recipe, runtime, progress=False,
                       log=lambda s: None)
        histories.append([r["cost"] for r in result.history])
    assert histories[0] == histories[1]
    plain = train(build_model(recipe.replace(augment="none")), tiny_dataset,
                  recipe.replace(augment="none"), runtime, progress=False, log=lambda s: None)
    assert [r["cost"] for r in plain.history] != histories[0]  # augmentation did take part
    for name, split in (("train", tiny_dataset.train), ("val", tiny_dataset.val),
                        ("test", tiny_dataset.test)):
        assert torch.equal(split.images, before[name][0])
        assert torch.equal(split.labels, before[name][1])
