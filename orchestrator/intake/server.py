"""The intake's HTTP protocol: uvicorn's httptools protocol with the client bounds a
public payment API needs and uvicorn does not have.

- **The request head must arrive within `header_read_timeout_s`**, from the connection's
  first byte or the request's first byte after a keep-alive pause. A client that opens
  connections and sends nothing, or a header line every few seconds (slowloris), held a
  connection and its buffers for as long as it liked: uvicorn times out only idle
  keep-alive connections, and the body is bounded by the app (`body_read_timeout_s`).
  Such a client gets 408 `header-timeout` and the connection is closed.
- **The request head (request line and headers) is at most `max_head_bytes`.** httptools
  has no limit of its own: a 32 MiB header was accepted. Past it: 431
  `headers-too-large`, and the connection is closed.
- **What the server itself refuses is problem+json**, like everything else the intake
  answers: a request that is not HTTP gets 400 `malformed-request` instead of uvicorn's
  text/plain "Invalid HTTP request received.".

The connection limit stays uvicorn's (`limit_concurrency`, 503); the problems are the
kinds of `orchestrator/intake/problems.py`.
"""

from __future__ import annotations

import asyncio
import logging

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orchestrator.intake.problems import PROBLEM_CONTENT_TYPE, PROBLEM_KINDS, PROBLEM_TYPE_BASE

log = logging.getLogger("payorch.intake")

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def problem_bytes(kind: str, detail: str) -> bytes:
    """A whole HTTP/1.1 problem+json response that closes the connection."""
    status, title = PROBLEM_KINDS[kind]
    body = orjson.dumps({"type": PROBLEM_TYPE_BASE + kind, "title": title, "status": status, "detail": detail})
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
        b"content-type: " + PROBLEM_CONTENT_TYPE.encode() + b"\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
        body,
    ])


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring; `bounded_protocol` makes one with the settings' bounds."""

    header_read_timeout_s: float = 10.0
    max_head_bytes: int = 32_768

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        # Whether a request head is being read, and how many bytes of it came so far.
        self._head_open = True
        self._head_bytes = 0

    # -- the head's deadline ------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open, self._head_bytes = True, 0
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_read_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # An earlier request on this connection is still being answered (pipelining):
            # its answer goes first, and the next head gets another period.
            self._arm_head_timer()
            return
        log.warning("closed a connection whose request head did not arrive within %g s", self.header_read_timeout_s,
                    extra={"client": f"{self.client[0]}:{self.client[1]}" if self.client else None})
        self._refuse("header-timeout", f"the request head did not arrive within {self.header_read_timeout_s:g} s")

    # -- reading, and the head's size -------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._refuse("malformed-request", "the request is not valid HTTP/1.1")
            return
        # httptools keeps an unfinished header line in memory until it ends, so the head is
        # measured as it arrives: while it is open, all of a chunk is head.
        if self._head_open:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse("headers-too-large", f"the request head is larger than {self.max_head_bytes} bytes")

    # -- refusals -----------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._refuse("malformed-request", msg)

    def _refuse(self, kind: str, detail: str) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.write(problem_bytes(kind, detail))
            self.transport.close()


def bounded_protocol(*, header_read_timeout_s: float, max_head_bytes: int) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for `uvicorn.run(http=...)`, with these bounds."""
    return type("IntakeHttpProtocol", (BoundedHttpToolsProtocol,),
                {"header_read_timeout_s": header_read_timeout_s, "max_head_bytes": max_head_bytes})
