"""The intake's HTTP protocol bounds (orchestrator/intake/server.py), over real sockets
against a real uvicorn server: a head that trickles in or never comes gets 408, a head
too large gets 431, a request that is not HTTP gets 400, all as problem+json, and the
connection is closed; a well-behaved client, keep-alive pauses included, is served."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn

from orchestrator.intake.server import bounded_protocol

HEAD_TIMEOUT_S = 1.0
MAX_HEAD_BYTES = 4_096


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


@contextmanager
def serving(app, *, header_read_timeout_s: float = HEAD_TIMEOUT_S, **config):
    """A real uvicorn with the intake's bounded protocol on a free port, in a thread."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    running = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", lifespan="off",
        http=bounded_protocol(header_read_timeout_s=header_read_timeout_s, max_head_bytes=MAX_HEAD_BYTES), **config))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        running.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server():
    with serving(hello, timeout_keep_alive=5) as port:
        yield port


def connect(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    return client


def read_until_closed(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65_536):
        chunks.append(chunk)
    return b"".join(chunks)


def problem(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"connection"] == b"close"
    return status, json.loads(body)


def test_a_well_behaved_client_is_served_and_may_pause_between_requests(server):
    client = connect(server)
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    client.sendall(request)
    assert client.recv(65_536).startswith(b"HTTP/1.1 200")
    time.sleep(HEAD_TIMEOUT_S * 1.5)  # a keep-alive pause is not a slow head
    client.sendall(request)
    assert client.recv(65_536).startswith(b"HTTP/1.1 200")
    client.close()


def test_a_head_that_trickles_in_gets_408_and_the_connection_is_closed(server):
    client = connect(server)
    started = time.monotonic()
    client.sendall(b"POST /v1/payments HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    answer = b""
    answered_after_s = None
    for index in range(40):  # one header line every 0.1 s, never the blank line
        try:
            client.sendall(b"X-Slow-%d: 1\r\n" % index)
        except (BrokenPipeError, ConnectionResetError):
            break
        client.settimeout(0.1)
        try:
            answer += client.recv(65_536)
        except TimeoutError:
            continue
        if answer:
            answered_after_s = time.monotonic() - started
            break
    client.settimeout(10)
    answer += read_until_closed(client)
    status, body = problem(answer)
    assert (status, body["type"]) == (408, "https://payorch.dev/problems/header-timeout")
    assert answered_after_s is not None and answered_after_s < 3 * HEAD_TIMEOUT_S, "the trickle was allowed to go on"


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(server):
    client = connect(server)
    status, body = problem(read_until_closed(client))
    assert (status, body["type"]) == (408, "https://payorch.dev/problems/header-timeout")


@pytest.mark.parametrize(("case", "size", "ending"), [
    ("a header line that never ends", MAX_HEAD_BYTES * 4, b""),
    ("a whole head in one piece", MAX_HEAD_BYTES * 2, b"\r\n\r\n"),
    # Far more than the server reads before it answers: the answer must still arrive,
    # not a reset (the connection lingers before it closes).
    ("a huge head", MAX_HEAD_BYTES * 256, b"\r\n\r\n"),
])
def test_a_head_larger_than_the_limit_gets_431(server, case, size, ending):
    client = connect(server)
    try:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * size + ending)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading once it answered; the answer is what counts
    status, body = problem(read_until_closed(client))
    assert (status, body["type"]) == (431, "https://payorch.dev/problems/headers-too-large"), case


def test_a_head_just_under_the_limit_is_served(server):
    client = connect(server)
    padding = MAX_HEAD_BYTES - 200
    client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * padding + b"\r\n\r\n")
    assert client.recv(65_536).startswith(b"HTTP/1.1 200")
    client.close()


def test_a_request_that_is_not_http_gets_400_problem_json(server):
    client = connect(server)
    client.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    status, body = problem(read_until_closed(client))
    assert (status, body["type"]) == (400, "https://payorch.dev/problems/malformed-request")


@contextmanager
def _released(event: threading.Event):
    try:
        yield
    finally:
        event.set()


def test_a_request_past_the_connection_limit_gets_503_server_busy_in_problem_json():
    release = threading.Event()

    async def slow(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            while not release.is_set():
                await asyncio.sleep(0.01)
        await hello(scope, receive, send)

    # Released however the test ends, so the server can stop.
    with serving(slow, header_read_timeout_s=10, limit_concurrency=2) as port, _released(release):
        busy = connect(port)
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.2)  # the first request is being served: one connection, one task
        refused = connect(port)
        refused.sendall(b"GET /fast HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_until_closed(refused)
        status, body = problem(answer)
        assert (status, body["type"]) == (503, "https://payorch.dev/problems/server-busy")
        assert b"retry-after: 1\r\n" in answer
        release.set()
        assert busy.recv(65_536).startswith(b"HTTP/1.1 200"), "the request within the limit is served"
