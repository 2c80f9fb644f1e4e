"""The vLLM routes that carry a `model`, each forwarded to the backend serving it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.routing import Route, WebSocketRoute

from ..forwarding.forwarder import Forwarder
from ..forwarding.realtime import PATH as REALTIME_PATH
from ..forwarding.realtime import RealtimeEndpoint

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

    __slots__ = ("forwarder", "path", "multipart")

    def __init__(self, forwarder: Forwarder, path: str, multipart: bool) -> None:
        self.forwarder, self.path, self.multipart = forwarder, path, multipart

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.forwarder.handle(scope, receive, send, self.path, self.multipart)


class StoredResponseEndpoint:
    """`GET /v1/responses/{response_id}` and `POST /v1/responses/{response_id}/cancel`: no model
    in them; the forwarder finds the address holding the response (`forwarding.affinity`)."""

    __slots__ = ("forwarder", "action")

    def __init__(self, forwarder: Forwarder, action: str) -> None:
        self.forwarder, self.action = forwarder, action

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.forwarder.handle_stored_response(scope, receive, send, scope["path_params"]["response_id"],
                                                    self.action)


def add_model_routes(app: FastAPI, forwarder: Forwarder, realtime: RealtimeEndpoint) -> dict[str, ModelEndpoint]:
    """Register the model routes; return their endpoints by path (the app's fast routes)."""
    endpoints = {path: ModelEndpoint(forwarder, path, False) for path in JSON_MODEL_ROUTES}
    endpoints.update({path: ModelEndpoint(forwarder, path, True) for path in MULTIPART_MODEL_ROUTES})
    for path, endpoint in endpoints.items():
        app.router.routes.append(Route(path, endpoint, methods=None))
    app.router.routes.append(Route("/v1/responses/{response_id}", StoredResponseEndpoint(forwarder, "retrieve"),
                                   methods=["GET"]))
    app.router.routes.append(Route("/v1/responses/{response_id}/cancel", StoredResponseEndpoint(forwarder, "cancel"),
                                   methods=["POST"]))
    app.router.routes.append(WebSocketRoute(REALTIME_PATH, realtime))
    return endpoints


__all__ = ["JSON_MODEL_ROUTES", "MULTIPART_MODEL_ROUTES", "ModelEndpoint", "StoredResponseEndpoint", "add_model_routes"]
