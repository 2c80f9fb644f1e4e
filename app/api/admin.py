"""The admin routes under `/admin/`: what an operator asks of a backend, from a script or from the
operator page's Actions. They take the admin key (`api.operator` has the rule) as
`Authorization: Bearer`, or the page's session cookie; client keys (`api_keys`) never open them.

- `POST /admin/backends/{name}/restart`: end a launched backend's process and start it again;
- `POST /admin/backends/{name}/sleep` and `/wake`: an on-demand backend (`launch.residency:
  on_demand`) put to sleep now, or woken now (e.g. before a batch job). Each waits until done: a
  sleep lets in-flight requests finish (up to `launch.drain_timeout`), a wake waits up to
  `launch.max_wait`;
- `POST /admin/backends/{name}/adapters/load` and `/unload` with `{"adapter": NAME}`: a
  configured LoRA adapter loaded on every address of the backend now, or unloaded.
Every error is in the OpenAI shape.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..errors import BadRequest, Conflict, Forbidden, GatewayError, Unauthorized
from ..residency.manager import ResidencyManager
from ..routing.backend import Backend
from ..supervise.supervisor import RestartRefused
from .operator import ADMIN, Access
from .routes import json_response


class BackendNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "backend_not_found"


def require_admin(request: Request) -> None:
    """Raise the 401/403 an admin route answers without the admin key or an admin session."""
    access: Access = request.app.state.access
    allowed, why = access.allows(request.scope, ADMIN)
    if not allowed:
        role, _ = access.role(request.scope)
        raise Unauthorized(why, headers={"WWW-Authenticate": "Bearer"}) if role is None else Forbidden(why)


def backend_named(request: Request, name: str) -> Backend:
    backend: Backend | None = request.app.state.registry.backends.get(name)
    if backend is None:
        known = ", ".join(request.app.state.registry.backends) or "none"
        raise BackendNotFound(f"no backend named {name[:80]!r}; the backends are: {known}", param="name")
    return backend


def add_admin_routes(app: FastAPI) -> None:
    @app.post("/admin/backends/{name}/restart", summary="End a launched backend's process and start it again")
    async def restart(request: Request, name: str) -> Response:
        require_admin(request)
        backend = backend_named(request, name)
        supervisor = request.app.state.supervisor
        unit = supervisor.unit(name) if supervisor is not None else None
        if unit is None:
            raise Conflict(f"backend {name!r} is external (no `launch:`): the gateway does not run its process; "
                           f"restart it where it runs", param="name", code="not_launched")
        try:
            result = unit.request_restart(f"asked through POST /admin/backends/{name}/restart")
        except RestartRefused as refused:
            raise Conflict(str(refused), param="name", code="restart_refused") from None
        return json_response({"backend": name, "action": "restart", "result": result, "state": backend.state}, 202)

    @app.post("/admin/backends/{name}/sleep", summary="Put an on-demand backend to sleep now")
    async def sleep(request: Request, name: str) -> Response:
        manager = _on_demand(request, name)
        took = await manager.sleep_now(name)
        return _residency_answer(request, name, "sleep", took)

    @app.post("/admin/backends/{name}/wake", summary="Wake an on-demand backend now (pre-warm)")
    async def wake(request: Request, name: str) -> Response:
        manager = _on_demand(request, name)
        took = await manager.wake_now(name)
        return _residency_answer(request, name, "wake", took)

    @app.post("/admin/backends/{name}/adapters/load", summary="Load a configured LoRA adapter on every address now")
    async def load_adapter(request: Request, name: str) -> Response:
        require_admin(request)
        backend, adapter = backend_named(request, name), await _adapter_named(request, name)
        await request.app.state.forwarding.adapters.load_everywhere(backend, adapter)
        return json_response({"backend": name, "action": "load", "adapter": adapter,
                              "adapters": backend.status().get("adapters")})

    @app.post("/admin/backends/{name}/adapters/unload", summary="Unload a LoRA adapter everywhere it is loaded")
    async def unload_adapter(request: Request, name: str) -> Response:
        require_admin(request)
        backend, adapter = backend_named(request, name), await _adapter_named(request, name)
        await request.app.state.forwarding.adapters.unload_everywhere(backend, adapter)
        return json_response({"backend": name, "action": "unload", "adapter": adapter,
                              "adapters": backend.status().get("adapters")})


def _on_demand(request: Request, name: str) -> ResidencyManager:
    """The manager, once the caller is the operator and `name` an on-demand backend."""
    require_admin(request)
    backend_named(request, name)
    manager: ResidencyManager | None = request.app.state.residency
    on_demand = sorted(manager.slots) if manager is not None else []
    if manager is None or name not in manager.slots:
        raise BadRequest(f"backend {name!r} is always resident (launch.residency: always); only on-demand backends "
                         f"sleep and wake: {', '.join(on_demand) or 'none configured'}", param="name", code="not_on_demand")
    return manager


def _residency_answer(request: Request, name: str, action: str, took: float) -> Response:
    backend = request.app.state.registry.backends[name]
    return json_response({"backend": name, "action": action, "state": backend.state, "took_s": round(took, 3),
                          "residency": backend.residency.status() if backend.residency is not None else None})


async def _adapter_named(request: Request, name: str) -> str:
    """The configured adapter the JSON body names (`{"adapter": NAME}`)."""
    try:
        body: Any = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise BadRequest('send {"adapter": "<name>"} as JSON', code="invalid_json") from None
    adapter = body.get("adapter") if isinstance(body, dict) else None
    configured = sorted(request.app.state.registry.backends[name].config.adapters)
    if not isinstance(adapter, str) or adapter not in configured:
        raise BadRequest(f"`adapter` must name one of backend {name!r}'s configured adapters: "
                         f"{', '.join(configured) or 'none configured'}", param="adapter", code="unknown_adapter")
    return adapter


__all__ = ["BackendNotFound", "add_admin_routes", "backend_named", "require_admin"]
