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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette._utils import get_route_path  # how Starlette's router sees the path
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class IntakeApp(FastAPI):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._direct_routes: dict[tuple[str, str], Endpoint] = {}

    def add_direct_route(self, method: str, path: str, endpoint: Endpoint) -> None:
        """Serve `method path` with `endpoint` directly. The route should also be added
        to FastAPI as usual, so that it is documented and other methods get 405."""
        self._direct_routes[(method, path)] = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (self._direct_routes.get((scope["method"], get_route_path(scope)))
                    if scope["type"] == "http" else None)
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
