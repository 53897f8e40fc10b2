"""Every network, registered by name with its default recipe (catalog.py says what each is).

Models take float images in [0, 1], shape (N, 1, 28, 28); `as_input` makes them from the uint8
tensors the dataset holds. Any further normalisation is a layer of the model itself, so that
exported and served models cannot drift from training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MnistCnnError
from .catalog import NETWORKS
from .recipes import Recipe


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]
    recipe: Recipe
    description: str
    # where a dataset needs other network arguments than the recipe's: {dataset: model_args}
    dataset_model_args: dict[str, dict] = field(default_factory=dict)


MODELS: dict[str, ModelEntry] = {}


def register(name: str, recipe: Recipe, dataset_model_args: dict[str, dict] | None = None):
    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:  # a second network under one name would replace the first unseen
            raise ValueError(f"a model named {name!r} is registered already")
        if name not in NETWORKS:  # the command line knows the networks from the catalog
            raise ValueError(f"a model named {name!r} is missing from catalog.NETWORKS")
        MODELS[name] = ModelEntry(name, build, recipe, NETWORKS[name].description,
                                  dataset_model_args or {})
        return build
    return decorator


def model_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise MnistCnnError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def recipe_for(name: str, dataset: str = "mnist") -> Recipe:
    """The default recipe of a registered network (the lecture's settings for simple and deep),
    with any adjustment the dataset needs."""
    entry = model_entry(name)
    changes = entry.dataset_model_args.get(dataset)
    if changes is None:
        return entry.recipe
    return entry.recipe.replace(model_args={**entry.recipe.model_args, **changes})


def build_model(name_or_recipe: str | Recipe, **overrides) -> nn.Module:
    """A freshly initialised network; its weights come from the recipe's seed, so the same recipe
    always gives the same starting point. The caller's random state is left as it was."""
    recipe = recipe_for(name_or_recipe) if isinstance(name_or_recipe, str) else name_or_recipe
    args = {"dropout": recipe.dropout, **recipe.model_args, **overrides}
    build = model_entry(recipe.model).build
    with torch.random.fork_rng(devices=[]):  # layers draw their initial weights from torch's RNG
        torch.manual_seed(recipe.seed)
        return build(**args)


def as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) -> float32 in [0, 1]; float input is passed through unchanged."""
    if images.dtype == torch.uint8:
        return images.float().mul_(1 / 255)
    return images.float()


# --------------------------------------------------------------------------------------------
# The lecture's networks


def lecture_init(model: nn.Module) -> None:
    """The lecture's initialisation: conv kernels N(0, 0.01) without bias, dense weights Xavier
    (Glorot uniform, TF's default), dense biases N(0, 1)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.normal_(m.bias, 0.0, 1.0)


class Dropout(nn.Module):
    """Inverted dropout whose mask comes from `torch.rand` rather than `bernoulli_`.

    Same distribution as nn.Dropout; on CPU, PyTorch's bernoulli_ costs about three times as much
    as rand, and in the deep CNN it was a quarter of each training step.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1 / (1 - self.p))
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def conv_block(c_in: int, c_out: int, dropout: float = 0.0) -> list[nn.Module]:
    """conv 3x3 SAME -> ReLU -> max-pool 2x2 SAME, computed as conv -> pool -> ReLU.

    ReLU and max-pooling commute (both are monotone), so pooling first gives identical numbers
    with a quarter of the ReLU work. ceil_mode=True is TF's SAME pooling (7x7 -> 4x4).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(Dropout(dropout))
    return layers


@register("simple", Recipe(model="simple"))
def simple_cnn(dropout: float = 0.0) -> nn.Module:
    model = nn.Sequential(
        *conv_block(1, 32, dropout),   # (?, 14, 14, 32)
        *conv_block(32, 64, dropout),  # (?, 7, 7, 64)
        nn.Flatten(),         # (?, 3136)
        nn.Linear(3136, 10),
    )
    lecture_init(model)
    return model


@register("deep", Recipe(model="deep", dropout=0.3))
def deep_cnn(dropout: float = 0.3) -> nn.Module:
    model = nn.Sequential(
        *conv_block(1, 32, dropout),    # (?, 14, 14, 32)
        *conv_block(32, 64, dropout),   # (?, 7, 7, 64)
        *conv_block(64, 128, dropout),  # (?, 4, 4, 128)
        nn.Flatten(),                   # (?, 2048)
        nn.Linear(2048, 625),
        nn.ReLU(inplace=True),
        Dropout(dropout),
        nn.Linear(625, 10),
    )
    lecture_init(model)
    return model


# --------------------------------------------------------------------------------------------
# Beyond the lecture


class FlattenNHWC(nn.Module):
    """Flatten in (H, W, C) order, as TensorFlow does: on channels-last activations this is a view,
    where nn.Flatten's (C, H, W) order costs a copy forwards and a layout change backwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


def bn_block(c_in: int, c_out: int) -> list[nn.Module]:
    """conv 3x3 SAME -> max-pool 2x2 SAME -> batch norm -> ReLU.

    Normalising after the pooling touches a quarter of the values; the network learns the same.
    """
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class CentreCrop(nn.Module):
    """Keep the central size x size pixels. MNIST digits are scaled into a 20x20 box and centred
    by mass in the 28x28 frame, so the outer ring is nearly blank: 2 px of it hold 0.22% of the
    training set's ink. Cropping it inside the model keeps the input 28x28 everywhere else."""

    def __init__(self, size: int, image_size: int = 28):
        super().__init__()
        self.size, self.start = size, (image_size - size) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.start:self.start + self.size, self.start:self.start + self.size]

    def extra_repr(self) -> str:
        return f"size={self.size}"


class Standardize(nn.Module):
    """(x - mean) / std with fixed constants (MNIST's pixel mean and spread), so that the first
    layer, which has no batch norm, starts from zero-centred inputs."""

    def __init__(self, mean: float = 0.1307, std: float = 0.3081):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * (1 / self.std)


# Fashion-MNIST's clothes fill the whole frame, so the crop that suits centred digits would cut
# them off (measured: 87.5% against 89.0% uncropped).
@register("fast", Recipe(model="fast", epochs=1, batch_size=192, lr=0.04, betas=(0.9, 0.99),
                         schedule="onecycle", warmup=0.3, label_smoothing=0.1, precision="bf16",
                         model_args={"crop": 24, "standardize": True}),
          dataset_model_args={"fashion-mnist": {"crop": 28}})
def fast_cnn(dropout: float = 0.0, widths: tuple[int, int, int, int] = (16, 16, 32, 64),
             crop: int = 24, standardize: bool = False) -> nn.Module:
    # standardize defaults to off because checkpoints saved before it existed don't name it;
    # the recipe (recorded in every checkpoint) turns it on
    c1, c2, c3, c4 = widths  # multiples of 16: oneDNN's AVX-512 kernels are blocked by 16 channels
    side = crop
    for _ in range(3):  # the strided conv and two SAME pools each halve the side, rounding up
        side = (side + 1) // 2
    # Each choice was measured against its alternatives (README, "99% in seconds"): the 24x24
    # crop (a fifth less arithmetic); a strided first conv instead of conv + pool (pooling full
    # size maps was the costliest element-wise work); no batch norm on that first layer (two
    # passes each way over its large maps, for nothing in accuracy); the widest layer last, where
    # the maps are smallest.
    return nn.Sequential(
        CentreCrop(crop),                          # (?, 24, 24, 1) with the recipe's crop
        *([Standardize()] if standardize else []),
        nn.Conv2d(1, c1, 3, stride=2, padding=1),  # (?, 12, 12, c1)
        nn.ReLU(inplace=True),
        *bn_block(c1, c2),  # (?, 6, 6, c2)
        *bn_block(c2, c3),  # (?, 3, 3, c3)
        *conv_bn(c3, c4),   # (?, 3, 3, c4)
        FlattenNHWC(),
        nn.Linear(side * side * c4, 10),
    )


def best_recipe(name: str) -> Recipe:
    """`best`'s recipe, which the networks built on it train with too."""
    return Recipe(model=name, epochs=15, batch_size=128, lr=0.003, schedule="onecycle",
                  warmup=0.2, label_smoothing=0.1, dropout=0.25, augment="standard",
                  precision="bf16")


@register("best", best_recipe("best"))
def best_cnn(dropout: float = 0.25, width: int = 32, channels: int = 1) -> nn.Module:
    w = width
    return nn.Sequential(
        *conv_bn(channels, w),                              # (?, 28, 28, w)
        nn.MaxPool2d(2),                                    # (?, 14, 14, w)
        *conv_bn(w, 2 * w), *conv_bn(2 * w, 2 * w),         # (?, 14, 14, 2w)
        nn.MaxPool2d(2),                                    # (?, 7, 7, 2w)
        *conv_bn(2 * w, 4 * w), *conv_bn(4 * w, 4 * w),     # (?, 7, 7, 4w)
        nn.MaxPool2d(2, ceil_mode=True),                    # (?, 4, 4, 4w)
        nn.Flatten(),
        Dropout(dropout),
        nn.Linear(64 * w, 10),
    )


# Ensemble members that differ from `best` in more than their seed: members that make the same
# mistakes cannot correct each other (issue 13: five `best` seeds scored no better than one).
@register("wide", best_recipe("wide"))
def wide_cnn(dropout: float = 0.25, width: int = 48) -> nn.Module:
    return best_cnn(dropout, width)


def resample(x: torch.Tensor, in_row: torch.Tensor, in_col: torch.Tensor) -> torch.Tensor:
    """Each output pixel of (n, 1, h, w) images read, bilinearly, from the input at (in_row,
    in_col), two (n, 1, h, w) tensors of pixel indices; zero outside the image."""
    h, w = x.shape[-2:]
    # pixel index -> grid_sample's normalised coordinates (align_corners=False)
    grid = torch.stack([(2 * in_col + 1) / w - 1, (2 * in_row + 1) / h - 1], dim=-1)
    return F.grid_sample(x, grid[:, 0], mode="bilinear", padding_mode="zeros", align_corners=False)


class Deskew(nn.Module):
    """Undo each digit's slant: shear it horizontally so that its ink has no x-y covariance, and
    move its centre of mass to the middle (image moments, the classic MNIST preprocessing).

    A network behind it sees upright digits whatever their slant, so it errs differently from one
    that learnt slants from augmentation. Built from grid_sample and plain arithmetic, so that it
    exports to ONNX (opset 16 and later).
    """

    def __init__(self, max_shear: float = 1.0) -> None:
        super().__init__()
        self.max_shear = max_shear  # a blank or one-pixel image has no meaningful slant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, 1, h, 1)
        cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, 1, w)
        mass = x.sum((2, 3), keepdim=True).clamp_min(1e-6)
        cy = (x * rows).sum((2, 3), keepdim=True) / mass
        cx = (x * cols).sum((2, 3), keepdim=True) / mass
        var_y = (x * (rows - cy) ** 2).sum((2, 3), keepdim=True) / mass
        cov = (x * (rows - cy) * (cols - cx)).sum((2, 3), keepdim=True) / mass
        shear = (cov / var_y.clamp_min(1e-6)).clamp(-self.max_shear, self.max_shear)
        # Output pixel (r, q) reads the input at row r + (cy - mid_r) and column
        # q + shear * (r - mid_r) + (cx - mid_q): the centre of mass lands in the middle.
        mid_r, mid_q = (h - 1) / 2, (w - 1) / 2
        in_row = (rows + (cy - mid_r)).expand(n, 1, h, w)
        in_col = cols + shear * (rows - mid_r) + (cx - mid_q)
        return resample(x, in_row, in_col)

    def extra_repr(self) -> str:
        return f"max_shear={self.max_shear}"


@register("upright", best_recipe("upright"))
def upright_cnn(dropout: float = 0.25, width: int = 32) -> nn.Module:
    return nn.Sequential(Deskew(), *best_cnn(dropout, width))


class WidthNormalize(nn.Module):
    """Stretch or squeeze each digit horizontally until its ink spans `width` pixels, centred;
    its height is left as MNIST made it (20 pixels). Normalising width is how the first ensembles
    beyond 99.7% made their members differ (Ciresan et al., 2012). A blank image stays blank.
    """

    def __init__(self, width: float = 16.0, ink: float = 0.1) -> None:
        super().__init__()
        self.width, self.ink = width, ink  # a column holds ink where a pixel exceeds `ink`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, w)
        inked = x.amax(dim=2)[:, 0] > self.ink  # (n, w): columns holding ink
        left = torch.where(inked, cols, torch.full_like(cols, w)).amin(1, keepdim=True)
        right = torch.where(inked, cols, torch.full_like(cols, -1)).amax(1, keepdim=True)
        span = (right - left + 1).clamp_min(1.0)
        centre = torch.where(right >= left, (left + right) / 2, torch.full_like(left, (w - 1) / 2))
        in_col = centre + (cols - (w - 1) / 2) * (span / self.width)  # (n, w)
        in_col = in_col.view(n, 1, 1, w).expand(n, 1, h, w)
        in_row = torch.arange(h, dtype=x.dtype, device=x.device).view(1, 1, h, 1).expand(n, 1, h, w)
        return resample(x, in_row, in_col)

    def extra_repr(self) -> str:
        return f"width={self.width}"


@register("widthnorm", best_recipe("widthnorm"))
def widthnorm_cnn(dropout: float = 0.25, width: int = 32) -> nn.Module:
    return nn.Sequential(WidthNormalize(), *best_cnn(dropout, width))


class Views(nn.Module):
    """Each digit three ways, as three channels: as written, deskewed, and width-normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.deskew, self.width_normalize = Deskew(), WidthNormalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.deskew(x), self.width_normalize(x)], dim=1)


@register("views", best_recipe("views"))
def views_cnn(dropout: float = 0.25, width: int = 32) -> nn.Module:
    return nn.Sequential(Views(), *best_cnn(dropout, width, channels=3))


@register("upright-widthnorm", best_recipe("upright-widthnorm"))
def upright_widthnorm_cnn(dropout: float = 0.25, width: int = 32) -> nn.Module:
    return nn.Sequential(Deskew(), WidthNormalize(), *best_cnn(dropout, width))


def conv5_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 5, padding=2, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


@register("five", best_recipe("five"))
def five_cnn(dropout: float = 0.25, width: int = 32) -> nn.Module:
    w = width
    return nn.Sequential(
        *conv5_bn(1, w), *conv5_bn(w, w),                  # (?, 28, 28, w)
        nn.MaxPool2d(2),                                    # (?, 14, 14, w)
        *conv_bn(w, 2 * w), *conv_bn(2 * w, 2 * w),         # (?, 14, 14, 2w)
        nn.MaxPool2d(2),                                    # (?, 7, 7, 2w)
        nn.Flatten(),
        Dropout(dropout),
        nn.Linear(2 * w * 49, 256, bias=False),
        nn.BatchNorm1d(256),
        nn.ReLU(inplace=True),
        Dropout(dropout),
        nn.Linear(256, 10),
    )


# --------------------------------------------------------------------------------------------
# Describing a network


def layer_shapes(model: nn.Module, image_size: int = 28) -> list[tuple[str, tuple[int, ...]]]:
    """Each leaf layer's output shape for one image, in order of execution."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(
        lambda mod, _inp, out, name=name: shapes.append((name, tuple(out.shape[1:]))))
        for name, m in model.named_modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def lecture_notation(shape: tuple[int, ...]) -> str:
    """(C, H, W) -> '(?, H, W, C)' as TensorFlow printed it; (F,) -> '(?, F)'."""
    dims = (*shape[1:], shape[0]) if len(shape) == 3 else shape
    return "(?, " + ", ".join(str(d) for d in dims) + ")"


def summary(model: nn.Module) -> str:
    lines = []
    for name, shape in layer_shapes(model):
        layer = model.get_submodule(name)
        params = sum(p.numel() for p in layer.parameters())
        lines.append(f"{name:>6}  {type(layer).__name__:<12} {lecture_notation(shape):<20} "
                     f"{params:>10,}")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    header = f"{'layer':>6}  {'type':<12} {'output shape':<20} {'parameters':>10}"
    return "\n".join([header, *lines, f"total parameters: {total:,} (trainable {trainable:,})"])
