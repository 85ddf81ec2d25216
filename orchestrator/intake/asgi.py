"""The intake's FastAPI application, with its busiest endpoint served ahead of FastAPI.

FastAPI's per-request layers (its OpenTelemetry check, which reads the environment on
every request, Starlette's middleware stack, the router and the dependency machinery)
cost more CPU per request than validating the payment. A direct route skips them: a
request whose method and path match goes straight to its endpoint. Every other
request, including other methods on the same path (405), goes through FastAPI as usual.

A direct endpoint must answer its expected errors itself (problem+json), since
FastAPI's exception handlers are among the layers it skips. An exception it lets
escape gets the application's own answer to unexpected errors, as Starlette's
ServerErrorMiddleware would give it, and is raised again for the server to log.

The Host check runs here too, ahead of both paths, so no request reaches an endpoint
(direct or not) under a Host the intake does not serve.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi import FastAPI
from starlette._utils import get_route_path  # how Starlette's router sees the path
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from orchestrator.intake.problems import Problem

Endpoint = Callable[[Request], Awaitable[Response]]

# Answered under any Host: load balancers' health checks name the target's address.
_ANY_HOST_PATHS = frozenset({"/healthz", "/readyz"})


def host_of(scope: Scope) -> str | None:
    """The request's Host header without its port, lower case; None if absent."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):  # an IPv6 literal, [::1]:8080
                return host[1:host.find("]")] if "]" in host else host
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return None


class IntakeApp(FastAPI):
    def __init__(self, *, allowed_hosts: Iterable[str] = ("*",), **kwargs) -> None:
        # No redirect to the same path with or without a trailing slash: Starlette builds
        # that redirect from the request's Host, which is how a client was sent away with
        # its POST body to a host it never meant.
        super().__init__(redirect_slashes=False, **kwargs)
        self._direct_routes: dict[tuple[str, str], Endpoint] = {}
        hosts = {host.strip().lower() for host in allowed_hosts}
        self._any_host = "*" in hosts
        self._allowed_hosts = frozenset(hosts)

    def add_direct_route(self, method: str, path: str, endpoint: Endpoint) -> None:
        """Serve `method path` with `endpoint` directly. The route should also be added
        to FastAPI as usual, so that it is documented and other methods get 405."""
        self._direct_routes[(method, path)] = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path = get_route_path(scope)
        if not self._any_host and path not in _ANY_HOST_PATHS:
            host = host_of(scope)
            if host not in self._allowed_hosts:
                problem = Problem("host-not-allowed", f"this intake does not serve host {(host or '')[:64]!r}")
                await problem.response(instance=path)(scope, receive, send)
                return
        endpoint = self._direct_routes.get((scope["method"], path))
        if endpoint is None:
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            unexpected = self.exception_handlers.get(Exception)
            if unexpected is not None:
                await (await unexpected(request, exc))(scope, receive, send)
            raise
        await response(scope, receive, send)
