"""Running the app under uvicorn, with a deadline for each request's headers.

uvicorn times out idle keep-alive connections, but not a client that sends its headers a byte at a
time: each such connection stays open for as long as the client likes (slowloris). Here every
request's headers must be complete within `request_timeout` seconds of the connection opening or
of the previous response; the app itself bounds the body's time (app.read_body).
"""

from __future__ import annotations

import asyncio

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import REQUEST_TIMEOUT


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers come too slowly."""

    request_timeout = REQUEST_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()  # the next request on this connection gets the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline: asyncio.TimerHandle | None = self.loop.call_later(
            self.request_timeout, self._headers_overdue)

    def _cancel_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _headers_overdue(self) -> None:
        # h11 leaves IDLE once a request's headers are complete: then the app has the request
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000,
                  request_timeout: float = REQUEST_TIMEOUT, **options) -> uvicorn.Config:
    """uvicorn's configuration for `app`, with the header deadline (options: uvicorn.Config's)."""
    protocol = type("Protocol", (HeaderDeadlineProtocol,), {"request_timeout": request_timeout})
    options.setdefault("log_level", "warning")
    options.setdefault("timeout_keep_alive", 5)
    return uvicorn.Config(app, host=host, port=port, http=protocol, **options)

