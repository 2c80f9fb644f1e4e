"""The gateway's own endpoints: `/v1/models`, `/health`, `/ready`, `/status`, `/version`, `/metrics`."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from .. import __version__
from ..gpu.telemetry import GpuSnapshot
from ..planner.plan import BackendPlan
from ..planner.render import plan_line


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def memory_status(plan: BackendPlan) -> dict[str, Any]:
    """A backend's memory plan as /status shows it (what `vllm-gateway plan` prints, as figures)."""
    return {"status": plan.status, "reason": plan.reason or None, "line": plan_line(plan), "share": plan.share,
            "share_source": plan.share_source, "devices": list(plan.devices), "weights_bytes": plan.weights_bytes,
            "kv_bytes_per_token": plan.kv_bytes_per_token, "kv_bytes": plan.kv_bytes, "kv_tokens": plan.kv_tokens,
            "sequences": plan.sequences, "max_model_len": plan.max_model_len, "estimated_bytes": plan.estimated_bytes}


def gpus_status(snapshot: GpuSnapshot | None) -> list[dict[str, Any]]:
    """Each GPU as NVML last read it (empty until the first reading)."""
    if snapshot is None:
        return []
    return [{"index": d.index, "uuid": d.uuid, "name": d.name, "total_bytes": d.total_bytes, "used_bytes": d.used_bytes,
             "utilization": d.utilization, "by_backend": dict(d.by_backend),
             "foreign": [{"pid": pid, "bytes": held} for pid, held in d.foreign]} for d in snapshot.devices]


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

    @app.get("/status", summary="Each backend's state, models, last error, planned memory and GPU memory held")
    async def status(request: Request) -> Response:
        state = request.app.state
        telemetry = state.gpu_telemetry
        snapshot = telemetry.latest if telemetry is not None else None
        plans = {b.name: b for b in state.plan.backends} if state.plan is not None else {}
        backends = []
        for backend in state.registry.backends.values():
            info = backend.status()
            planned = plans.get(backend.name)
            if planned is not None:
                info["memory"] = memory_status(planned)
            if snapshot is not None and backend.launched:
                info["gpu_memory_bytes"] = snapshot.backend_memory(backend.name)
            backends.append(info)
        return json_response({
            "version": __version__,
            "shutting_down": state.shutting_down,
            "backends": backends,
            "gpus": gpus_status(snapshot) if telemetry is not None else None,
        })

    @app.get("/version")
    async def version() -> Response:
        return json_response({"version": __version__})

    @app.get("/metrics", summary="Prometheus text: the gateway's own metrics and every backend's vllm:* metrics")
    async def metrics(request: Request) -> Response:
        page, content_type = await request.app.state.metrics_page.render()
        return Response(page, media_type=content_type)


__all__ = ["add_routes", "json_response"]
