"""The ASGI app: FastAPI, with the model routes answered before its middleware stack and router.

Forwarding needs none of their work (no dependency injection, no exception middleware: the
forwarder answers every failure itself), and skipping them takes about a sixth off the gateway's
CPU per request (bench/NOTES.md section 3). `fast_routes` stays empty when a middleware (CORS)
must see every request; API keys then wrap each fast endpoint instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from ..errors import GatewayError, error_body


class GatewayApp(FastAPI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_routes: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.fast_routes.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def add_error_handlers(app: FastAPI) -> None:
    """404 and 405 in the OpenAI error shape, like every error the gateway answers itself."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route {request.url.path}; the gateway serves the OpenAI and vLLM model routes under /v1"
            code: str | None = "not_found"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        return Response(error_body(message, "invalid_request_error", None, code), exc.status_code,
                        media_type="application/json", headers=getattr(exc, "headers", None))

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return Response(exc.body(), exc.status, media_type="application/json", headers=exc.headers)


__all__ = ["GatewayApp", "add_error_handlers"]
