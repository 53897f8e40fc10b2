"""What one upload, and the server as a whole, may spend: the defaults of `mnist-cnn serve`.

A module of its own, without FastAPI, so that the command line reads the defaults cheaply.
"""

from __future__ import annotations

import math

from ..errors import MnistCnnError

MAX_UPLOAD_BYTES = 16 * 1024 * 1024  # a phone photo is a few MB
MAX_PIXELS = 25_000_000  # pixels decoded at most (a larger JPEG is decoded at 1/2, 1/4 or 1/8 size)
MAX_CONCURRENT = 2  # images decoded and classified at once; each may take ~150 MB for a moment
QUEUE_TIMEOUT = 2.0  # seconds a request waits for a free slot before a 503
REQUEST_TIMEOUT = 15.0  # seconds to send the headers, and again to send the body


def check_limits(max_upload_bytes: int, max_pixels: int, max_concurrent: int,
                 queue_timeout: float, request_timeout: float) -> None:
    """One-line errors for limits that make no sense (named by `serve`'s flags)."""
    for name, value in (("max upload bytes", max_upload_bytes), ("--max-pixels", max_pixels),
                        ("--max-concurrent", max_concurrent)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MnistCnnError(f"{name} must be a whole number >= 1, not {value!r}")
    for name, seconds in (("--queue-timeout", queue_timeout), ("--request-timeout", request_timeout)):
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
            raise MnistCnnError(f"{name} must be a number of seconds > 0, not {seconds!r}")
