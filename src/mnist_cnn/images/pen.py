"""Digits and letters drawn as pen trajectories: a few strokes per character through control
points, each hand's version bent by random slant, proportions and wobble. A source of
handwriting that is neither MNIST's writers nor a font, for the photo report sets.
"""

from __future__ import annotations

import numpy as np

from ..opencv import cv2


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 9
         ) -> list[tuple[float, float]]:
    """Points on an ellipse from angle `start` to `end` (degrees, 0 = right, 90 = down)."""
    t = np.radians(np.linspace(start, end, n))
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in t]


# Each character: strokes, each a list of control points in a box 0..1 (x right, y down);
# the variants are ways people write the same character
STROKES: dict[str, list[list[list[tuple[float, float]]]]] = {
    "0": [[_arc(0.5, 0.5, 0.38, 0.5, -90, 275, 14)]],
    "1": [[[(0.55, 0.0), (0.55, 1.0)]],
          [[(0.25, 0.25), (0.55, 0.0), (0.55, 1.0)]],
          [[(0.25, 0.25), (0.55, 0.0), (0.55, 1.0)], [(0.3, 1.0), (0.8, 1.0)]]],
    "2": [[_arc(0.5, 0.3, 0.38, 0.3, 190, 370, 7) + [(0.75, 0.5), (0.1, 1.0), (0.95, 1.0)]],
          [_arc(0.5, 0.3, 0.38, 0.3, 190, 380, 7) + [(0.1, 1.0), (0.4, 0.88), (0.95, 1.0)]]],
    "3": [[_arc(0.48, 0.26, 0.35, 0.26, 200, 450, 8) + _arc(0.48, 0.74, 0.4, 0.26, -90, 150, 8)]],
    "4": [[[(0.72, 1.0), (0.72, 0.0), (0.05, 0.68), (0.95, 0.68)]],
          [[(0.25, 0.0), (0.12, 0.6), (0.92, 0.6)], [(0.7, 0.2), (0.7, 1.0)]]],
    "5": [[[(0.85, 0.0), (0.25, 0.0), (0.18, 0.45)] + _arc(0.5, 0.7, 0.38, 0.3, -120, 150, 9)],
          [[(0.2, 0.0), (0.16, 0.45)] + _arc(0.5, 0.7, 0.38, 0.3, -120, 150, 9),
           [(0.2, 0.0), (0.85, 0.02)]]],
    "6": [[[(0.78, 0.02), (0.45, 0.2), (0.18, 0.55)] + _arc(0.5, 0.7, 0.32, 0.3, 180, 540, 12)]],
    "7": [[[(0.08, 0.0), (0.92, 0.0), (0.38, 1.0)]],
          [[(0.08, 0.05), (0.92, 0.0), (0.38, 1.0)], [(0.3, 0.5), (0.8, 0.5)]]],
    "8": [[_arc(0.5, 0.26, 0.3, 0.26, 90, 450, 12) + _arc(0.5, 0.73, 0.36, 0.27, -90, 270, 12)]],
    "9": [[_arc(0.48, 0.3, 0.33, 0.3, 0, 360, 12) + [(0.8, 0.35), (0.72, 1.0)]],
          [_arc(0.48, 0.3, 0.33, 0.3, 0, 360, 12) + [(0.8, 0.35), (0.78, 0.8), (0.55, 1.0)]]],
    # letters and signs that look like no digit, for "not a digit"
    "A": [[[(0.0, 1.0), (0.5, 0.0), (1.0, 1.0)], [(0.2, 0.6), (0.8, 0.6)]]],
    "E": [[[(0.9, 0.0), (0.1, 0.0), (0.1, 1.0), (0.9, 1.0)], [(0.1, 0.5), (0.7, 0.5)]]],
    "F": [[[(0.9, 0.0), (0.1, 0.0), (0.1, 1.0)], [(0.1, 0.5), (0.7, 0.5)]]],
    "H": [[[(0.1, 0.0), (0.1, 1.0)], [(0.9, 0.0), (0.9, 1.0)], [(0.1, 0.5), (0.9, 0.5)]]],
    "K": [[[(0.15, 0.0), (0.15, 1.0)], [(0.9, 0.0), (0.15, 0.55), (0.9, 1.0)]]],
    "M": [[[(0.0, 1.0), (0.1, 0.0), (0.5, 0.7), (0.9, 0.0), (1.0, 1.0)]]],
    "N": [[[(0.1, 1.0), (0.1, 0.0), (0.9, 1.0), (0.9, 0.0)]]],
    "R": [[[(0.15, 1.0), (0.15, 0.0)] + _arc(0.45, 0.25, 0.35, 0.25, -90, 90, 7)
           + [(0.15, 0.5), (0.9, 1.0)]]],
    "T": [[[(0.0, 0.0), (1.0, 0.0)], [(0.5, 0.0), (0.5, 1.0)]]],
    "V": [[[(0.0, 0.0), (0.5, 1.0), (1.0, 0.0)]]],
    "W": [[[(0.0, 0.0), (0.25, 1.0), (0.5, 0.3), (0.75, 1.0), (1.0, 0.0)]]],
    "X": [[[(0.0, 0.0), (1.0, 1.0)], [(1.0, 0.0), (0.0, 1.0)]]],
    "Y": [[[(0.0, 0.0), (0.5, 0.5), (1.0, 0.0)], [(0.5, 0.5), (0.5, 1.0)]]],
    "#": [[[(0.35, 0.0), (0.25, 1.0)], [(0.75, 0.0), (0.65, 1.0)], [(0.0, 0.33), (1.0, 0.33)],
           [(0.0, 0.67), (1.0, 0.67)]]],
    "*": [[[(0.5, 0.0), (0.5, 1.0)], [(0.07, 0.25), (0.93, 0.75)], [(0.93, 0.25), (0.07, 0.75)]]],
}
DIGITS = "0123456789"
LETTERS = "AEFHKMNRTVWXY#*"


def _smooth(points: np.ndarray, n: int = 6) -> np.ndarray:
    """A Catmull-Rom curve through the points (`n` samples between each pair)."""
    if len(points) < 3:
        return points
    padded = np.vstack([points[:1], points, points[-1:]])
    t = np.linspace(0, 1, n, endpoint=False)[:, None]
    curve = []
    for p0, p1, p2, p3 in zip(padded[:-3], padded[1:-2], padded[2:-1], padded[3:]):
        curve.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                            + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    curve.append(points[-1:])
    return np.vstack(curve)


def draw(char: str, rng: np.random.Generator, height: int = 96) -> np.ndarray:
    """`char` (one of STROKES) written by a random hand: white ink on black, uint8, about
    `height` rows, strokes about 8% of the height wide (set them with notebook.set_stroke)."""
    variants = STROKES[char]
    strokes = variants[rng.integers(len(variants))]
    slant = rng.uniform(-0.35, 0.2)  # most hands lean right (negative: the top moves right)
    width = rng.uniform(0.45, 0.75) if char in DIGITS else rng.uniform(0.7, 1.0)
    angle = np.radians(rng.uniform(-6, 6))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    wobble = rng.uniform(0.01, 0.05)
    margin = height // 4
    canvas = np.zeros((height + 2 * margin, int(height * 1.6) + 2 * margin), np.uint8)
    thickness = max(1, round(height * 0.08))
    for stroke in strokes:
        points = np.array(stroke, np.float64)
        points = points + rng.normal(0, wobble, points.shape)
        points[:, 0] = points[:, 0] * width - slant * (points[:, 1] - 0.5)
        points = (points - 0.5) @ rotation.T
        curve = _smooth(points)
        pixels = (curve * height + [canvas.shape[1] / 2, canvas.shape[0] / 2]) * 4
        cv2.polylines(canvas, [np.round(pixels).astype(np.int32)], False, 255, thickness,
                      cv2.LINE_AA, shift=2)
    from .synthetic import crop_ink  # one crop for every synthetic glyph

    return crop_ink(canvas)
