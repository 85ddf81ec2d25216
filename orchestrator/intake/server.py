"""The intake's HTTP protocol: uvicorn's httptools protocol with the client bounds a
public payment API needs and uvicorn does not have.

- **The request head must arrive within `header_read_timeout_s`**, from the connection's
  first byte or the request's first byte after a keep-alive pause. A client that opens
  connections and sends nothing, or a header line every few seconds (slowloris), held a
  connection and its buffers for as long as it liked: uvicorn times out only idle
  keep-alive connections, and the body is bounded by the app (`body_read_timeout_s`).
  Such a client gets 408 `header-timeout` and the connection is closed.
- **The request head (request line and headers) is at most `max_head_bytes`.** httptools
  has no limit of its own: a 32 MiB header was accepted. It is counted as the parser
  reports it and, while a head is still open, as its bytes arrive (httptools holds an
  unfinished header line in memory). Past it: 431 `headers-too-large`, and the
  connection is closed.
- **What the server itself refuses is problem+json**, like everything else the intake
  answers: a request that is not HTTP gets 400 `malformed-request` instead of uvicorn's
  text/plain "Invalid HTTP request received.", and a request past the connection limit
  (`limit_concurrency`) 503 `server-busy` with `Retry-After` instead of "Service
  Unavailable".

After a refusal the server stops writing, drops what still comes and closes after
`LINGER_S`: closing at once with the rest of a large head unread made the kernel reset
the connection, and clients lost the answer. The problems are the kinds of
`orchestrator/intake/problems.py`.
"""

from __future__ import annotations

import asyncio
import logging

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orchestrator.intake.problems import PROBLEM_CONTENT_TYPE, PROBLEM_KINDS, PROBLEM_TYPE_BASE

log = logging.getLogger("payorch.intake")

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}
# What a client past the connection limit is told to wait before it tries again.
BUSY_RETRY_AFTER_S = 1
# After a refusal the connection stays open this long, reading and dropping what the client
# still sends, before it is closed: closing with unread data makes the kernel reset the
# connection, and the client may then lose the answer (nginx's "lingering close").
LINGER_S = 1.0


class _HeadRefused(Exception):
    """Raised in a parser callback to stop reading a head that is refused."""


class _Refused(Exception):
    """Raised in a parser callback after the request was answered with a refusal."""


def problem_bytes(kind: str, detail: str, *, retry_after_s: int | None = None) -> bytes:
    """A whole HTTP/1.1 problem+json response that closes the connection."""
    status, title = PROBLEM_KINDS[kind]
    body = orjson.dumps({"type": PROBLEM_TYPE_BASE + kind, "title": title, "status": status, "detail": detail})
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
        b"content-type: " + PROBLEM_CONTENT_TYPE.encode() + b"\r\n",
        b"content-length: %d\r\n" % len(body),
        b"retry-after: %d\r\n" % retry_after_s if retry_after_s is not None else b"",
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
        # Whether a request head is being read; its bytes as they came (across chunks, while
        # it is open) and as the parser reported them (request line and headers).
        self._head_open = True
        self._head_wire_bytes = 0
        self._head_parsed_bytes = 0
        self._refused = False
        self._linger: asyncio.TimerHandle | None = None

    # -- the head's deadline ------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open, self._head_wire_bytes, self._head_parsed_bytes = True, 0, 0
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._cancel_head_timer()
        limit = self.limit_concurrency
        answering = self.cycle is not None and not self.cycle.response_complete
        # A pipelined request behind one still being answered keeps uvicorn's in-order 503.
        if limit is not None and not answering and (len(self.connections) >= limit or len(self.tasks) >= limit):
            # uvicorn's own answer here is a text/plain 503 that keeps the connection.
            log.warning("refused a request: %d connections and %d requests at the limit of %d",
                        len(self.connections), len(self.tasks), limit)
            self._refuse("server-busy", f"this intake serves at most {limit} connections at once",
                         retry_after_s=BUSY_RETRY_AFTER_S)
            raise _Refused  # the request gets no cycle: the parser stops here
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

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # with ": " and CRLF
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_parsed_bytes += size
        if self._head_parsed_bytes > self.max_head_bytes:
            raise _HeadRefused

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: what still comes is dropped
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            # A callback's exception reaches here wrapped by the parser.
            if isinstance(exc.__context__, _HeadRefused):
                self._refuse_large_head()
            elif not isinstance(exc.__context__, _Refused):
                self._refuse("malformed-request", "the request is not valid HTTP/1.1")
            return
        # httptools keeps an unfinished header line in memory until it ends, so an open
        # head is also measured as it arrives: while it is open, all of a chunk is head.
        if self._head_open:
            self._head_wire_bytes += len(data)
            if self._head_wire_bytes > self.max_head_bytes:
                self._refuse_large_head()

    def _refuse_large_head(self) -> None:
        self._refuse("headers-too-large", f"the request head is larger than {self.max_head_bytes} bytes")

    # -- refusals -----------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._refuse("malformed-request", msg)

    def _refuse(self, kind: str, detail: str, *, retry_after_s: int | None = None) -> None:
        """Answer `kind` and end the connection: no more writes, what comes is dropped, and
        it closes after `LINGER_S` (or when the client closes first)."""
        self._cancel_head_timer()
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self.transport.write(problem_bytes(kind, detail, retry_after_s=retry_after_s))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)


def bounded_protocol(*, header_read_timeout_s: float, max_head_bytes: int) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for `uvicorn.run(http=...)`, with these bounds."""
    return type("IntakeHttpProtocol", (BoundedHttpToolsProtocol,),
                {"header_read_timeout_s": header_read_timeout_s, "max_head_bytes": max_head_bytes})
