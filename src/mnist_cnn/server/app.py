"""A web page to draw a digit on, and the small JSON API behind it.

    GET  /              the drawing page (static/index.html)
    GET  /api/model     which network answers: name, dataset, classes, accuracies
    POST /api/predict   body: one image (PNG, JPEG, ...; the page sends its canvas as PNG)
                        -> the class, every class's probability, whether it looks like a
                           digit at all ("is_digit"), and the 28x28 image the network saw
                           (a PNG data URL)
    POST /api/predict?number=1   the image read as a row of digits (numbers.py): the number,
                        and each digit's class, probability, is_digit, box (in the upload's
                        pixels), top_k
    GET  /healthz, /readyz, /metrics   liveness, readiness, Prometheus metrics (HEAD too)

Uploads go through the path of `mnist-cnn predict` (imaging.py), shrunk first when over
WORK_PIXELS; the checkpoint's network (or an ensemble's averaged softmax) classifies them.
Bad uploads get a 4xx answer with a one-line reason: too large (413), too slow (408), not an
image, too many pixels, corrupt, or blank (400); busy slots give 503 (limits.py has the limits).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from importlib import resources

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool

from ..errors import MnistCnnError
from ..images.preprocess import FIELD, WORK_PIXELS, ImageError, TooManyPixels, png_bytes
from ..inference.evaluation import CPU
from ..inference.predict import Predictor
from ..models.checkpoint import CheckpointMeta, load_whole_digit
from ..runtime.device import Runtime
from ..runtime.threads import glibc
from .limits import (
    MAX_CONCURRENT,
    MAX_PIXELS,
    MAX_UPLOAD_BYTES,
    QUEUE_TIMEOUT,
    REQUEST_TIMEOUT,
    check_limits,
)

UPLOAD = "the upload"  # how error messages name it


def describe_models(metas: Sequence[CheckpointMeta]) -> dict:
    """What the page shows about the network(s) answering, from their checkpoints' metadata."""
    return {
        "models": [m.recipe.model for m in metas],
        "dataset": metas[0].dataset or "mnist",
        # as measured after the last epoch; an ensemble's own accuracy was never measured
        "validation_accuracy": [m.metrics.get("val_accuracy") for m in metas],
        # measured on the test set when the checkpoint was made (the shipped model records it)
        "test_accuracy": [m.metrics.get("test_accuracy") for m in metas],
    }


def png_data_url(final) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(final)).decode()


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes, and with 408 when it
    has not all arrived `timeout` seconds after the headers (a client trickling bytes)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refusal(413, "too_large", f"upload too large: {int(declared):,} bytes "
                      f"(limit {limit:,})")
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), deadline - time.monotonic())
        except StopAsyncIteration:
            return b"".join(chunks)
        except asyncio.TimeoutError:
            raise Refusal(408, "timeout", f"upload too slow: not complete after {timeout:g} s") \
                from None
        size += len(chunk)
        if size > limit:
            raise Refusal(413, "too_large", f"upload too large: over {limit:,} bytes")
        chunks.append(chunk)


class Refusal(HTTPException):
    """A request refused for a reason the metrics count (`reason`: a short label)."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict | None = None):
        if status in (408, 413):  # the client may still be sending: close rather than read on
            headers = {**(headers or {}), "connection": "close"}
        super().__init__(status, detail, headers)
        self.reason = reason


class Metrics:
    """Prometheus metrics of one app, in a registry of its own (apps in one process don't clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mnist_cnn_http_requests", "HTTP requests answered, by endpoint "
                                "and status", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("mnist_cnn_http_request_duration_seconds", "Time to answer, by "
                                 "endpoint", ["endpoint"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.in_flight = Gauge("mnist_cnn_http_requests_in_flight", "Requests being answered",
                               registry=self.registry)
        self.refusals = Counter("mnist_cnn_refusals", "Requests refused (400, 408, 413, 503), "
                                "by reason", ["reason"], registry=self.registry)


class Measured:
    """ASGI middleware: counts every request by its route (not its raw path: bounded labels)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless the app answers

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")  # the router sets it on the shared scope
            endpoint = route.path if route is not None else "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class OneFraming:
    """ASGI middleware: a request giving both Content-Length and Transfer-Encoding is refused and
    its connection closed (RFC 9112, 6.3). A proxy in front may frame it by the other header:
    a request hidden in its body would then be answered as one of its own."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        names = {name for name, _ in scope.get("headers", [])}
        if scope["type"] == "http" and {b"content-length", b"transfer-encoding"} <= names:
            response = JSONResponse({"detail": "a request gives Content-Length or "
                                     "Transfer-Encoding, not both"}, 400, {"connection": "close"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise; one decode is ~100 MB)."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def server_answer(read: Callable[[bytes], dict], body: bytes) -> dict:
    """`read`'s answer; a bad image is the client's error (400), outputs that are not finite
    numbers the server's (500)."""
    try:
        return read(body)
    except TooManyPixels as e:
        raise Refusal(400, "too_many_pixels", str(e)) from None
    except ImageError as e:
        raise Refusal(400, "bad_image", str(e)) from None
    except MnistCnnError as e:  # the network's outputs are not finite
        raise HTTPException(500, str(e)) from None


class Reader:
    """What the routes read uploads with: the predictor, the upload limits, and the slots that
    bound how many uploads are decoded and classified at once."""

    def __init__(self, predictor: Predictor, max_pixels: int, max_concurrent: int,
                 queue_timeout: float) -> None:
        self.predictor, self.max_pixels = predictor, max_pixels
        self.work_pixels = min(WORK_PIXELS, max_pixels)
        self.max_concurrent, self.queue_timeout = max_concurrent, queue_timeout
        self.slots = asyncio.Semaphore(max_concurrent)
        self.working = 0  # uploads holding a slot
        self.ready = False  # until the models have answered once (the first call allocates)

    def warm_up(self) -> None:
        self.predictor.proba(torch.zeros(1, 1, FIELD, FIELD, dtype=torch.uint8))
        self.ready = True

    def digit(self, body: bytes) -> dict:
        top, probabilities, steps = self.predictor.read_digit(body, self.max_pixels, UPLOAD,
                                                              self.work_pixels)
        return {**top, "probabilities": [float(p) for p in probabilities],
                "inverted": steps.inverted, "preprocessed": png_data_url(steps.final)}

    def number(self, body: bytes) -> dict:
        reading = self.predictor.read_number(body, len(self.predictor.classes), self.max_pixels,
                                             UPLOAD, self.work_pixels)
        return {"number": reading.number, "digits": reading.digits, "is_digit": reading.is_digit,
                "inverted": reading.inverted}

    async def read(self, body: bytes, number: bool) -> dict:
        """The upload's answer, once a slot is free (503 after `queue_timeout` seconds)."""
        try:
            await asyncio.wait_for(self.slots.acquire(), self.queue_timeout)
        except asyncio.TimeoutError:
            raise Refusal(503, "busy", f"busy: {self.max_concurrent} images are being read; try "
                          "again in a second", {"retry-after": "1"}) from None
        self.working += 1
        try:
            # preprocessing and the network are CPU work: off the event loop
            return await run_in_threadpool(server_answer, self.number if number else self.digit,
                                           body)
        finally:
            self.working -= 1
            self.slots.release()


def add_status_routes(app: FastAPI, reader: Reader, info: dict, metrics: Metrics) -> None:
    """Which network answers, liveness, readiness and the Prometheus metrics (HEAD too)."""
    @app.api_route("/api/model", methods=["GET", "HEAD"])
    def model_info() -> dict:
        return info

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    def healthz() -> dict:
        return {"status": "alive"}

    @app.api_route("/readyz", methods=["GET", "HEAD"])
    def readyz() -> JSONResponse:
        if not reader.ready:
            return JSONResponse({"status": "starting"}, 503)
        return JSONResponse({"status": "ready", "models": info["models"]})

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(checkpoints: Sequence[str | os.PathLike], runtime: Runtime = CPU,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
               max_concurrent: int = MAX_CONCURRENT, queue_timeout: float = QUEUE_TIMEOUT,
               request_timeout: float = REQUEST_TIMEOUT) -> FastAPI:
    """The web app for one checkpoint, or several (an ensemble). Models load once, here.

    At most `max_concurrent` uploads are decoded and classified at once; others wait up to
    `queue_timeout` seconds, then get 503. A body must arrive within `request_timeout` seconds.
    """
    check_limits(max_upload_bytes, max_pixels, max_concurrent, queue_timeout, request_timeout)
    predictor = Predictor.load(checkpoints, runtime)
    load_whole_digit()  # numbers are cut with it: a damaged install fails here, not when asked
    reader = Reader(predictor, max_pixels, max_concurrent, queue_timeout)
    info = {**describe_models(predictor.metas), "classes": list(predictor.classes)}
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(reader.warm_up)
        yield

    # no OpenAPI schema or docs: the API is the two routes below, documented in the README.
    # No redirects from /api/model/ to /api/model: Starlette's would name the host the request
    # claims (its Host header), and send the client there.
    app = FastAPI(title="mnist-cnn", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan, redirect_slashes=False)
    app.add_middleware(OneFraming)
    app.add_middleware(Measured, metrics=metrics)  # outermost: it counts every answer

    @app.exception_handler(Refusal)
    async def refused(request: Request, e: Refusal) -> JSONResponse:
        metrics.refusals.labels(e.reason).inc()
        return JSONResponse({"detail": e.detail}, e.status_code, e.headers)

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    def index() -> str:
        return page

    add_status_routes(app, reader, info, metrics)

    @app.post("/api/predict")
    async def predict(request: Request, number: bool = False) -> dict:
        body = await read_body(request, max_upload_bytes, request_timeout)
        if not body:
            raise Refusal(400, "empty", "empty upload: send the image's bytes as the request body")
        try:
            return await reader.read(body, number)
        finally:
            del body
            if reader.working == 0:  # the last one out, its upload freed: a burst is over
                await run_in_threadpool(release_memory)

    return app
