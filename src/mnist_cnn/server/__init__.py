"""The drawing page and its JSON API (FastAPI); `mnist-cnn serve` runs it with uvicorn."""

from .app import create_app

__all__ = ["create_app"]
