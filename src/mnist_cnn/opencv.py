"""OpenCV, imported without changing the process: its loader adds its own folder to
LD_LIBRARY_PATH, which would leak into the caller's environment and every child process.
Modules of mnist-cnn import cv2 from here."""

from __future__ import annotations

import os

_saved = os.environ.get("LD_LIBRARY_PATH")
import cv2  # noqa: E402  (the environment is saved first)

if _saved is None:
    os.environ.pop("LD_LIBRARY_PATH", None)
else:
    os.environ["LD_LIBRARY_PATH"] = _saved

__all__ = ["cv2"]
