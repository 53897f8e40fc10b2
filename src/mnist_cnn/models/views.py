"""`best` on transformed input, for ensembles whose members err differently: deskewed
(`upright`), width-normalised (`widthnorm`), both (`upright-widthnorm`), or all three views as
channels (`views`). The transforms are layers of the model, so exported models keep them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .best import best_cnn, best_recipe
from .registry import register


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


@register(best_recipe("upright"))
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


@register(best_recipe("widthnorm"))
def widthnorm_cnn(dropout: float = 0.25, width: int = 32) -> nn.Module:
    return nn.Sequential(WidthNormalize(), *best_cnn(dropout, width))


class Views(nn.Module):
    """Each digit three ways, as three channels: as written, deskewed, and width-normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.deskew, self.width_normalize = Deskew(), WidthNormalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.deskew(x), self.width_normalize(x)], dim=1)


@register(best_recipe("views"))
def views_cnn(dropout: float = 0.25, width: int = 32) -> nn.Module:
    return nn.Sequential(Views(), *best_cnn(dropout, width, channels=3))


@register(best_recipe("upright-widthnorm"))
def upright_widthnorm_cnn(dropout: float = 0.25, width: int = 32) -> nn.Module:
    return nn.Sequential(Deskew(), WidthNormalize(), *best_cnn(dropout, width))
