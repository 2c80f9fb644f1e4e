"""The gateway's own endpoints: `/v1/models`, `/health`, `/ready`, `/status`, `/version`, `/metrics`."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from .. import __version__


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def add_routes(app: FastAPI) -> None:
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
        results = await state.health.check_all()
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
            "residency": state.residency.status() if state.residency is not None else None,
        })

    @app.get("/version")
    async def version() -> Response:
        return json_response({"version": __version__})

    @app.get("/metrics", summary="Prometheus text: the gateway's own metrics and every backend's vllm:* metrics")
    async def metrics(request: Request) -> Response:
        page, content_type = await request.app.state.metrics_page.render()
        return Response(page, media_type=content_type)


__all__ = ["add_routes", "json_response"]
