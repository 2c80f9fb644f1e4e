"""The admin routes under `/admin/`: what an operator asks of a backend, from a script or from the
operator page's Actions. They take the admin key (`api.operator` has the rule) as
`Authorization: Bearer`, or the page's session cookie.

Here: `POST /admin/backends/{name}/restart`. Sleep, wake and the adapters' load and unload live
beside it under the same guard (README, "Admin routes").
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..errors import Conflict, Forbidden, GatewayError, Unauthorized
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


__all__ = ["BackendNotFound", "add_admin_routes", "backend_named", "require_admin"]
