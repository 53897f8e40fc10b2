"""The drawing page and its JSON API (FastAPI); `mnist-cnn serve` runs it with uvicorn."""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    # FastAPI loads on first use: `mnist-cnn` reads the server's limits (server.limits) without it
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
