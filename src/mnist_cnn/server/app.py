"""A web page to draw a digit on, and the small JSON API behind it.

    GET  /              the drawing page (static/index.html)
    GET  /api/model     which network answers: name, dataset, classes, test accuracy
    POST /api/predict   body: one image (PNG, JPEG, ...; the page sends its canvas as PNG)
                        -> the class, every class's probability, and the 28x28 image the
                           network saw (a PNG data URL)

Uploads go through exactly the path of `mnist-cnn predict`: imaging.py turns them into the MNIST
convention and the checkpoint's network (or an ensemble's averaged softmax) classifies them.
Bad uploads get a 4xx answer with a one-line reason: too large (413), not an image, corrupt, or
blank (400).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from importlib import resources

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..checkpoint import CheckpointMeta
from ..device import Runtime
from ..ensemble import ensemble_proba, load_members
from ..evaluation import CPU
from ..imaging import ImageError, load_and_preprocess, to_tensor
from ..predict import NOT_FINITE, class_names, ranked

MAX_UPLOAD_BYTES = 16 * 1024 * 1024  # a phone photo is a few MB
MAX_PIXELS = 25_000_000  # decoding is bounded too: 25 megapixels at most
UPLOAD = "the upload"  # how error messages name it


def describe_models(metas: Sequence[CheckpointMeta]) -> dict:
    """What the page shows about the network(s) answering, from their checkpoints' metadata."""
    return {
        "models": [m.recipe.model for m in metas],
        "dataset": metas[0].dataset or "mnist",
        # as measured after the last epoch; an ensemble's own accuracy was never measured
        "validation_accuracy": [m.metrics.get("val_accuracy") for m in metas],
    }


def png_data_url(final) -> str:
    buffer = io.BytesIO()
    Image.fromarray(final).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload too large: {int(declared):,} bytes (limit {limit:,})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload too large: over {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(checkpoints: Sequence[str | os.PathLike], runtime: Runtime = CPU,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> FastAPI:
    """The web app for one checkpoint, or several (an ensemble). Models load once, here."""
    members = load_members(checkpoints, runtime.device)
    models = [model for model, _ in members]
    classes = class_names(members[0][1])
    info = {**describe_models([meta for _, meta in members]), "classes": list(classes)}
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
    app = FastAPI(title="mnist-cnn", docs_url=None, redoc_url=None)

    def classify(body: bytes) -> dict:
        try:
            steps = load_and_preprocess(body, max_pixels, UPLOAD)
        except ImageError as e:
            raise HTTPException(400, str(e)) from None
        probabilities = ensemble_proba(models, to_tensor(steps.final)[None], runtime=runtime)[0]
        if not bool(torch.isfinite(probabilities).all()):  # finite but huge weights can overflow
            raise HTTPException(500, NOT_FINITE)
        best = int(probabilities.argmax())
        return {
            "digit": classes[best],
            "index": best,
            "probability": float(probabilities[best]),
            "probabilities": [float(p) for p in probabilities],
            "top_k": ranked(probabilities, classes, len(classes)),
            "inverted": steps.inverted,
            "preprocessed": png_data_url(steps.final),
        }

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/model")
    def model_info() -> dict:
        return info

    @app.post("/api/predict")
    async def predict(request: Request) -> dict:
        body = await read_body(request, max_upload_bytes)
        if not body:
            raise HTTPException(400, "empty upload: send the image's bytes as the request body")
        # preprocessing and the network are CPU work: off the event loop
        return await run_in_threadpool(classify, body)

    return app
