"""The operator's routes: `POST /admin/backends/{name}/sleep` and `POST /admin/backends/{name}/wake`.

For on-demand backends (`launch.residency: on_demand`), e.g. to wake a model before a batch job,
or to free its GPU memory now. Each waits until done: a sleep lets in-flight requests finish (up
to `launch.drain_timeout`), a wake waits up to `launch.max_wait`. Behind `admin_api_key`, else
`metrics_api_key`, as a Bearer token; with neither configured they are refused (403), as client
keys (`api_keys`) never open them. Every error is in the OpenAI shape.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..errors import BadRequest, Forbidden, GatewayError, Unauthorized
from ..residency.manager import ResidencyManager
from .auth import authorized
from .routes import json_response


class BackendNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "backend_not_found"


def add_admin_routes(app: FastAPI) -> None:
    @app.post("/admin/backends/{name}/sleep", summary="Put an on-demand backend to sleep now")
    async def sleep(request: Request, name: str) -> Response:
        manager = _on_demand(request, name)
        took = await manager.sleep_now(name)
        return _answer(request, name, "sleep", took)

    @app.post("/admin/backends/{name}/wake", summary="Wake an on-demand backend now (pre-warm)")
    async def wake(request: Request, name: str) -> Response:
        manager = _on_demand(request, name)
        took = await manager.wake_now(name)
        return _answer(request, name, "wake", took)


def _on_demand(request: Request, name: str) -> ResidencyManager:
    """The manager, once the caller is the operator and `name` an on-demand backend."""
    state = request.app.state
    settings = state.settings
    key = settings.admin_api_key or settings.metrics_api_key
    if key is None:
        raise Forbidden("the admin routes are off: set admin_api_key (or metrics_api_key) and send it as "
                        "`Authorization: Bearer <key>`", code="admin_disabled")
    if not authorized(request.scope["headers"], [key.get_secret_value()]):
        raise Unauthorized("missing or wrong admin key: send admin_api_key (else metrics_api_key) as "
                           "`Authorization: Bearer <key>`", headers={"WWW-Authenticate": "Bearer"})
    manager: ResidencyManager | None = state.residency
    on_demand = sorted(manager.slots) if manager is not None else []
    backend = state.registry.backends.get(name)
    if backend is None:
        raise BackendNotFound(f"no backend named {name!r}; on-demand backends: {', '.join(on_demand) or 'none'}",
                              param="name")
    if manager is None or name not in manager.slots:
        raise BadRequest(f"backend {name!r} is always resident (launch.residency: always); only on-demand backends "
                         f"sleep and wake: {', '.join(on_demand) or 'none configured'}", param="name", code="not_on_demand")
    return manager


def _answer(request: Request, name: str, action: str, took: float) -> Response:
    backend = request.app.state.registry.backends[name]
    return json_response({"backend": name, "action": action, "state": backend.state, "took_s": round(took, 3),
                          "residency": backend.residency.status() if backend.residency is not None else None})


__all__ = ["add_admin_routes"]
