"""HTTP routes: the model routes forwarded by the proxy, and the gateway's own endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route, WebSocketRoute

from . import __version__
from .errors import GatewayError, error_body
from .proxy import Proxy
from .realtime import PATH as REALTIME_PATH, RealtimeEndpoint

# Every vLLM route whose JSON body carries `model` (vLLM reference, section 1.2).
JSON_MODEL_ROUTES = (
    "/v1/chat/completions",
    "/v1/chat/completions/batch",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/score",
    "/v1/rerank",
    "/v2/rerank",
    "/v2/embed",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/rerank",
    "/score",
    "/pooling",
    "/classify",
    "/tokenize",
    "/detokenize",
    "/invocations",
    "/generative_scoring",
)
# Audio uploads: `model` is a form field.
MULTIPART_MODEL_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")


class ModelEndpoint:
    """A plain ASGI endpoint: no dependency injection or response models on the hot path."""

    __slots__ = ("proxy", "path", "multipart")

    def __init__(self, proxy: Proxy, path: str, multipart: bool) -> None:
        self.proxy, self.path, self.multipart = proxy, path, multipart

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.proxy.handle(scope, receive, send, self.path, self.multipart)


class StoredResponseEndpoint:
    """`GET /v1/responses/{response_id}` and `POST /v1/responses/{response_id}/cancel`: no model
    in them; the proxy finds the address holding the response (`app.affinity`)."""

    __slots__ = ("proxy", "action")

    def __init__(self, proxy: Proxy, action: str) -> None:
        self.proxy, self.action = proxy, action

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.proxy.handle_stored_response(scope, receive, send, scope["path_params"]["response_id"], self.action)


class GatewayApp(FastAPI):
    """FastAPI, with the model routes answered before its middleware stack and router.

    Forwarding needs none of their work (no dependency injection, no exception middleware: the
    proxy answers every failure itself), and skipping them takes about a sixth off the gateway's
    CPU per request. `fast_routes` stays empty when a middleware (CORS) must see every request.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_routes: dict[str, Any] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            endpoint = self.fast_routes.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def add_routes(app: FastAPI, proxy: Proxy) -> dict[str, ModelEndpoint]:
    """Register every route; return the model routes' endpoints by path."""
    endpoints = {path: ModelEndpoint(proxy, path, False) for path in JSON_MODEL_ROUTES}
    endpoints.update({path: ModelEndpoint(proxy, path, True) for path in MULTIPART_MODEL_ROUTES})
    for path, endpoint in endpoints.items():
        app.router.routes.append(Route(path, endpoint, methods=None))
    app.router.routes.append(Route("/v1/responses/{response_id}", StoredResponseEndpoint(proxy, "retrieve"),
                                   methods=["GET"]))
    app.router.routes.append(Route("/v1/responses/{response_id}/cancel", StoredResponseEndpoint(proxy, "cancel"),
                                   methods=["POST"]))
    app.router.routes.append(WebSocketRoute(REALTIME_PATH, RealtimeEndpoint(proxy)))  # app.realtime

    @app.get("/v1/models", include_in_schema=True, summary="Every model of every backend, aliases included")
    async def list_models(request: Request) -> Response:
        registry = request.app.state.registry
        return json_response({"object": "list", "data": registry.model_cards()})

    @app.api_route("/health", methods=["GET", "HEAD"], summary="200 while the gateway process is alive")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready", summary="200 only when every backend answers its own GET /health")
    async def ready(request: Request, require: str = "all") -> Response:
        """`?require=any` suits several gateway replicas in Kubernetes: a replica stays in the
        Service while at least one backend is up, so the models that are up stay reachable."""
        state = request.app.state
        if require not in ("all", "any"):
            return json_response({"error": {"message": "require must be `all` or `any`", "type": "invalid_request_error",
                                            "param": "require", "code": "invalid_value"}}, 400)
        if state.shutting_down:
            return json_response({"ready": False, "reason": "shutting down"}, 503)
        results = await state.registry.check_all()
        down = [name for name, ok in results.items() if not ok]
        up = len(results) - len(down)
        if not results or (down and require == "all") or up == 0:
            reason = "no backends configured" if not results else "backends not ready"
            return json_response({"ready": False, "reason": reason, "not_ready": down}, 503)
        return json_response({"ready": True, "backends": [n for n, ok in results.items() if ok], "not_ready": down})

    @app.get("/status", summary="Each backend's state, models and last error")
    async def status(request: Request) -> Response:
        state = request.app.state
        return json_response({
            "version": __version__,
            "shutting_down": state.shutting_down,
            "backends": [b.status() for b in state.registry.backends.values()],
        })

    @app.get("/version")
    async def version() -> Response:
        return json_response({"version": __version__})

    @app.get("/metrics", summary="Prometheus text: the gateway's own metrics and every backend's vllm:* metrics")
    async def metrics(request: Request) -> Response:
        page, content_type = await request.app.state.metrics_page.render()
        return Response(page, media_type=content_type)

    return endpoints


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route {request.url.path}; the gateway serves the OpenAI and vLLM model routes under /v1"
            code = "not_found"
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


__all__ = ["JSON_MODEL_ROUTES", "MULTIPART_MODEL_ROUTES", "GatewayApp", "ModelEndpoint", "add_error_handlers", "add_routes"]
