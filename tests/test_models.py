"""The registry, the lecture's two networks, their initialisation and the custom layers."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models.layers import CentreCrop, Dropout, conv_block
from mnist_cnn.models.recipes import Recipe
from mnist_cnn.models.registry import MODELS, as_input, build_model, model_entry, recipe_for
from mnist_cnn.models.summary import lecture_notation, summary
from mnist_cnn.models.views import Deskew, WidthNormalize

SHAPE = re.compile(r"\(\?, [\d, ]+\)")


def shapes_in(text: str) -> list[str]:
    return SHAPE.findall(text)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_registry_holds_the_lecture_networks():
    assert {"simple", "deep"} <= set(MODELS)
    assert model_entry("simple").name == "simple"
    assert recipe_for("simple") == Recipe(model="simple")
    deep = recipe_for("deep")
    assert deep.model == "deep" and deep.dropout == pytest.approx(0.3)
    # the lecture's settings
    assert (deep.epochs, deep.batch_size, deep.lr, deep.optimizer) == (15, 100, 1e-3, "adam")


def test_unknown_model_is_an_error_listing_the_known_ones():
    with pytest.raises(MnistCnnError, match="unknown model 'resnet'") as e:
        build_model("resnet")
    assert "simple" in str(e.value) and "deep" in str(e.value)
    with pytest.raises(MnistCnnError):
        recipe_for("resnet")


def test_lecture_notation():
    assert lecture_notation((32, 14, 14)) == "(?, 14, 14, 32)"
    assert lecture_notation((3136,)) == "(?, 3136)"


def test_simple_summary_shapes_and_parameters():
    text = summary(build_model("simple"))
    assert shapes_in(text) == [
        "(?, 28, 28, 32)",  # conv
        "(?, 14, 14, 32)",  # pool
        "(?, 14, 14, 32)",  # relu
        "(?, 14, 14, 64)",
        "(?, 7, 7, 64)",
        "(?, 7, 7, 64)",
        "(?, 3136)",
        "(?, 10)",
    ]
    assert "total parameters: 50,090 (trainable 50,090)" in text


def test_simple_parameter_counts_per_layer():
    model = build_model("simple")
    counts = [sum(p.numel() for p in m.parameters())
              for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert counts == [288, 18_432, 31_370]
    assert sum(p.numel() for p in model.parameters()) == 50_090


def test_deep_summary_shapes_and_parameters():
    text = summary(build_model("deep"))
    shapes = shapes_in(text)
    for expected in ("(?, 28, 28, 32)", "(?, 7, 7, 128)", "(?, 4, 4, 128)", "(?, 2048)",
                     "(?, 625)"):
        assert expected in shapes
    assert shapes.index("(?, 4, 4, 128)") < shapes.index("(?, 2048)") < shapes.index("(?, 625)")
    assert shapes[-1] == "(?, 10)"
    total = 288 + 18_432 + 73_728 + (2048 * 625 + 625) + (625 * 10 + 10)
    assert f"total parameters: {total:,}" in text


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_gives_ten_logits_per_image(name):
    model = build_model(name).eval()
    out = model(as_input(images(3)))
    assert out.shape == (3, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_as_input_scales_bytes_and_passes_floats():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(as_input(x), torch.tensor([0.0, 0.2, 1.0]))
    f = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert as_input(f).dtype == torch.float32
    assert as_input(f).tolist() == [0.5, 2.0]


def test_lecture_initialisation_statistics():
    model = build_model("deep").requires_grad_(False)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 3 and len(dense) == 2
    for conv in convs:
        assert conv.bias is None
    big = convs[-1].weight  # 73,728 weights: a tight estimate
    assert float(big.std()) == pytest.approx(0.01, rel=0.03)
    assert abs(float(big.mean())) < 5e-4
    for conv in convs:
        assert float(conv.weight.std()) == pytest.approx(0.01, rel=0.15)
    hidden = dense[0]
    assert hidden.out_features == 625
    assert float(hidden.bias.std()) == pytest.approx(1.0, abs=0.1)
    assert abs(float(hidden.bias.mean())) < 0.15
    for layer in dense:  # Glorot uniform
        bound = math.sqrt(6 / (layer.in_features + layer.out_features))
        assert float(layer.weight.abs().max()) <= bound
        assert float(layer.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_same_recipe_gives_identical_initial_weights():
    a, b = build_model("deep").state_dict(), build_model("deep").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = build_model(recipe_for("deep").replace(seed=1)).state_dict()
    assert not torch.equal(a["0.weight"], other["0.weight"])


def test_build_model_applies_the_recipes_dropout():
    model = build_model(recipe_for("deep").replace(dropout=0.5))
    rates = {m.p for m in model.modules() if isinstance(m, Dropout)}
    assert rates == {0.5}


def test_dropout_is_the_identity_in_eval_mode():
    layer = Dropout(0.3).eval()
    x = torch.rand(100, 100)
    assert torch.equal(layer(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_dropout_in_training_drops_p_and_preserves_the_mean():
    torch.manual_seed(0)
    p = 0.3
    layer = Dropout(p).train()
    x = torch.ones(1000, 1000)
    y = layer(x)
    zero_fraction = float((y == 0).float().mean())
    assert zero_fraction == pytest.approx(p, abs=0.005)
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)))
    assert float(y.mean()) == pytest.approx(1.0, abs=0.01)
    assert torch.equal(x, torch.ones(1000, 1000))  # the input is left alone


@pytest.mark.parametrize("size", [28, 14, 7])
def test_conv_block_pool_then_relu_equals_relu_then_pool(size):
    torch.manual_seed(size)
    block = nn.Sequential(*conv_block(3, 8))
    nn.init.normal_(block[0].weight)
    x = torch.randn(5, 3, size, size)
    expected = F.max_pool2d(F.relu(block[0](x)), 2, 2, ceil_mode=True)
    got = block(x)
    assert got.shape == (5, 8, math.ceil(size / 2), math.ceil(size / 2))
    assert torch.equal(got, expected)
    assert (got == 0).any() and (got > 0).any()  # both branches of the ReLU were exercised


def test_conv_block_adds_dropout_only_when_asked():
    assert not any(isinstance(m, Dropout) for m in conv_block(1, 4))
    assert isinstance(conv_block(1, 4, 0.2)[-1], Dropout)


def test_deep_is_deterministic_in_eval_mode_and_random_in_training():
    model = build_model("deep")
    x = as_input(images(8))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_summary_leaves_the_training_mode_alone():
    model = build_model("deep").train()
    summary(model)
    assert model.training
    model.eval()
    summary(model)
    assert not model.training


def test_centre_crop_keeps_the_middle_of_the_frame():
    x = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28)
    out = CentreCrop(24)(x)
    assert out.shape == (1, 1, 24, 24)
    assert torch.equal(out, x[:, :, 2:26, 2:26])
    assert torch.equal(CentreCrop(28)(x), x)


def test_fast_crops_digits_but_not_fashion():
    assert recipe_for("fast").model_args["crop"] == 24
    assert recipe_for("fast", "fashion-mnist").model_args["crop"] == 28
    assert recipe_for("deep", "fashion-mnist") == recipe_for("deep")
    assert shapes_in(summary(build_model("fast")))[0] == "(?, 24, 24, 1)"
    uncropped = build_model(recipe_for("fast", "fashion-mnist"))
    assert shapes_in(summary(uncropped))[0] == "(?, 28, 28, 1)"
    assert uncropped(as_input(images(2))).shape == (2, 10)


def test_fast_ignores_the_blank_border_it_crops():
    model = build_model("fast").eval()
    x = as_input(images(2))
    ringed = x.clone()
    ringed[:, :, :2] = ringed[:, :, -2:] = 1.0
    ringed[:, :, :, :2] = ringed[:, :, :, -2:] = 1.0
    with torch.no_grad():
        assert torch.equal(model(x), model(ringed))


def test_the_catalog_tells_the_registered_networks_as_they_are():
    """The command line describes the networks from catalog.py, without torch: it must agree."""
    from mnist_cnn.models import catalog
    from mnist_cnn.training.augment import PRESETS

    assert list(catalog.NETWORKS) == list(MODELS)
    for name, network in catalog.NETWORKS.items():
        parameters = sum(p.numel() for p in build_model(name).parameters())
        assert network.parameters == parameters, name
        assert MODELS[name].description == network.description
    assert catalog.AUGMENT_PRESETS == tuple(PRESETS)


def test_a_network_missing_from_the_catalog_cannot_be_registered():
    from mnist_cnn.models.registry import register

    with pytest.raises(ValueError, match="missing from catalog.NETWORKS"):
        register(Recipe(model="mystery"))(lambda: None)


def test_a_name_cannot_be_registered_twice():
    from mnist_cnn.models.registry import MODELS, register

    with pytest.raises(ValueError, match="'simple' is registered already"):
        register(MODELS["simple"].recipe)(lambda: None)
    assert MODELS["simple"].description.startswith("the lecture's simple CNN")


def test_building_a_network_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = build_model(recipe_for("deep").replace(seed=5))
    assert torch.equal(torch.rand(3), expected)  # the caller's stream goes on where it was
    second = build_model(recipe_for("deep").replace(seed=5))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)  # and the network still comes from its recipe's seed alone


def slanted_bar(shear: float) -> torch.Tensor:
    """A 2-pixel-wide stroke from top to bottom, leaning by `shear` pixels per row."""
    image = torch.zeros(1, 1, 28, 28)
    for row in range(4, 24):
        col = round(13 + shear * (row - 13.5))
        image[0, 0, row, col:col + 2] = 1.0
    return image


def ink_covariance(image: torch.Tensor) -> float:
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = image[0, 0] / image.sum()
    cy, cx = (w * rows).sum(), (w * cols).sum()
    return float((w * (rows - cy) * (cols - cx)).sum())


@pytest.mark.parametrize("shear", [-0.4, 0.3, 0.5])
def test_deskew_stands_a_slanted_stroke_upright_in_the_middle(shear):
    bar = slanted_bar(shear)
    assert abs(ink_covariance(bar)) > 3
    upright = Deskew()(bar)
    assert abs(ink_covariance(upright)) < 0.3
    cols = upright[0, 0].sum(0)
    assert int((cols > 0.5).sum()) <= 4  # one narrow column of ink
    centre = float((cols * torch.arange(28.0)).sum() / cols.sum())
    assert abs(centre - 13.5) < 0.5
    assert float(upright.sum()) == pytest.approx(float(bar.sum()), rel=0.05)  # ink is moved, not lost


def test_deskew_keeps_blank_and_single_pixel_images_finite():
    blank = torch.zeros(2, 1, 28, 28)
    dot = torch.zeros(1, 1, 28, 28)
    dot[0, 0, 3, 25] = 1.0
    assert torch.equal(Deskew()(blank), blank)
    assert torch.isfinite(Deskew()(dot)).all()


@pytest.mark.parametrize(("left", "right"), [(12, 15), (3, 25), (8, 13)])
def test_width_normalisation_spans_sixteen_pixels_centred(left, right):
    box = torch.zeros(1, 1, 28, 28)
    box[0, 0, 4:24, left:right] = 1.0
    out = WidthNormalize(width=16)(box)
    cols = torch.nonzero(out[0, 0].amax(0) > 0.5).flatten()
    assert 15 <= len(cols) <= 17  # the ink's columns, whatever they were before
    assert abs(float(cols.float().mean()) - 13.5) <= 1
    rows = torch.nonzero(out[0, 0].amax(1) > 0.5).flatten()
    assert rows.tolist() == list(range(4, 24))  # the height is untouched


def test_width_normalisation_keeps_blank_images_blank():
    blank = torch.zeros(3, 1, 28, 28)
    assert torch.equal(WidthNormalize()(blank), blank)
