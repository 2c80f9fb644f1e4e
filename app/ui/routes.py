"""`GET /ui` and what it reads: the sign-in form, its assets, the live events, the playground.

Every answer carries a Content-Security-Policy that allows this origin only (no inline script,
no other host, no framing). The assets are read from the package once, at start-up: no CDN,
nothing fetched, the page works on an air-gapped box.
"""

from __future__ import annotations

import hashlib
import html
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.routing import Route

from ..api.operator import COOKIE, VIEW, Access, is_https, same_origin, session_cookie
from ..errors import Forbidden, GatewayError, Unauthorized, error_body, send_error
from ..forwarding.forwarder import Forwarder
from .feed import LiveFeed

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
PUBLIC_ASSETS = frozenset({"ui.css", "favicon.svg"})  # what the sign-in form needs; no data in them
_LOGIN_FORM_LIMIT = 4096
PLAYGROUND_ROUTE = "/v1/chat/completions"


class Assets:
    """The files under `static/`, read once; an ETag each, so a reload costs a 304."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for entry in resources.files(__package__).joinpath("static").iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in _TYPES:
                body = entry.read_bytes()
                self.files[entry.name] = (body, _TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:16] + '"')

    def response(self, name: str, request: Request) -> Response:
        body, media, etag = self.files[name]
        headers = {**SECURITY_HEADERS, "etag": etag, "cache-control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media, headers=headers)


def _page(body: bytes | str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="text/html; charset=utf-8",
                    headers={**SECURITY_HEADERS, "cache-control": "no-store", **(headers or {})})


def _refusal(why: str, status: int = 401) -> Response:
    """401 (no operator key or session) or 403 (a key that may not do this)."""
    error: GatewayError = Unauthorized(why) if status == 401 else Forbidden(why)
    return Response(error.body(), status_code=status, media_type="application/json",
                    headers={**SECURITY_HEADERS, "cache-control": "no-store"})


class PlaygroundEndpoint:
    """`POST /ui/playground`: a chat completion through the forwarder, as `/v1/chat/completions`
    would be, for a signed-in page that holds no client key (the cookie never goes upstream)."""

    def __init__(self, access: Access, forwarder: Forwarder) -> None:
        self.access = access
        self.forwarder = forwarder

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        allowed, why = self.access.allows(scope, self.access.playground_role)
        if not allowed:
            role, _ = self.access.role(scope)
            await send_error(send, Unauthorized(why) if role is None else Forbidden(why))
            return
        await self.forwarder.handle(scope, receive, send, PLAYGROUND_ROUTE, False)


def add_ui_routes(app: FastAPI, access: Access, feed: LiveFeed, forwarder: Forwarder) -> None:
    assets = Assets()
    login_form = assets.files["login.html"][0].decode()

    def login_page(message: str, status: int = 401) -> Response:
        return _page(login_form.replace("{{message}}", html.escape(message)), status)

    @app.get("/ui", include_in_schema=False)
    async def ui(request: Request) -> Response:
        allowed, why = access.allows(request.scope, VIEW)
        if not allowed:
            return login_page(why if access.client_keys_only else "")
        return assets.response("index.html", request)

    @app.get("/ui/", include_in_schema=False)
    async def ui_slash() -> Response:
        return Response(status_code=308, headers={**SECURITY_HEADERS, "location": "/ui"})

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not same_origin(request.scope["headers"]):
            return login_page("Sign in from this gateway's own /ui page.", 403)
        body = await request.body()
        key = parse_qs(body[:_LOGIN_FORM_LIMIT].decode("utf-8", "replace")).get("key", [""])[0].strip()
        role = access.role_of_key(key)
        if role is None:
            return login_page("That is not the admin or the metrics key of this gateway.")
        token = access.sessions.issue(role)
        cookie = (f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(access.sessions.lifetime)}"
                  + ("; Secure" if is_https(request.scope) else ""))
        return Response(status_code=303, headers={**SECURITY_HEADERS, "location": "/ui", "set-cookie": cookie,
                                                  "cache-control": "no-store"})

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        if same_origin(request.scope["headers"]):
            access.sessions.sign_out(session_cookie(request.scope["headers"]))
        return Response(status_code=303, headers={**SECURITY_HEADERS, "location": "/ui", "cache-control": "no-store",
                                                  "set-cookie": f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"})

    @app.get("/ui/session", include_in_schema=False)
    async def session(request: Request) -> Response:
        """The page asks this when its event stream broke: signed out (401), or the gateway gone."""
        allowed, why = access.allows(request.scope, VIEW)
        if not allowed:
            return _refusal(why)
        role, _ = access.role(request.scope)
        return Response(b'{"role": "%s"}' % (role or "").encode(), media_type="application/json",
                        headers={**SECURITY_HEADERS, "cache-control": "no-store"})

    @app.get("/ui/events", include_in_schema=False)
    async def events(request: Request) -> Response:
        allowed, why = access.allows(request.scope, VIEW)
        if not allowed:
            return _refusal(why)
        role, by_cookie = access.role(request.scope)
        return StreamingResponse(feed.stream(role or VIEW, by_cookie), media_type="text/event-stream",
                                 headers={**SECURITY_HEADERS, "cache-control": "no-store", "x-accel-buffering": "no"})

    @app.get("/ui/snapshot", include_in_schema=False)
    async def snapshot(request: Request) -> Response:
        """The page's first event as one JSON document (for scripts: `curl -H 'Authorization: ...'`)."""
        allowed, why = access.allows(request.scope, VIEW)
        if not allowed:
            return _refusal(why)
        role, _ = access.role(request.scope)
        data = feed.hello(role or VIEW)
        payload = data[data.index(b"data: ") + 6:].rstrip()
        return Response(payload, media_type="application/json", headers={**SECURITY_HEADERS, "cache-control": "no-store"})

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def static(request: Request, name: str) -> Response:
        if name not in assets.files or name == "login.html":
            missing = error_body(f"no asset {name[:80]!r} in the operator page", "invalid_request_error", None, "not_found")
            return Response(missing, status_code=404, media_type="application/json", headers=SECURITY_HEADERS)
        if name not in PUBLIC_ASSETS:
            allowed, why = access.allows(request.scope, VIEW)
            if not allowed:
                return _refusal(why)
        return assets.response(name, request)

    app.router.routes.append(Route("/ui/playground", PlaygroundEndpoint(access, forwarder), methods=["POST"]))


__all__ = ["PLAYGROUND_ROUTE", "PUBLIC_ASSETS", "SECURITY_HEADERS", "add_ui_routes"]
