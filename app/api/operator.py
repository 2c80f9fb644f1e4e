"""Who may read the operator page and who may act: the one rule for `/ui` and `/admin/`.

| keys configured | page and its data | actions (admin routes), playground |
| --- | --- | --- |
| none at all | open | open |
| `admin_api_key` | that key | that key |
| `metrics_api_key` | that key | that key too, unless `admin_api_key` is set |
| only `api_keys` | refused: set one of the two above | refused |

A key comes as `Authorization: Bearer <key>` (scripts) or, for the page, once through the sign-in
form, which gives an HttpOnly, SameSite=Strict cookie holding a signed session (`api.sessions`);
no key is ever put in a page or a URL. A request that relies on the cookie to change something
must come from the page itself (`Sec-Fetch-Site: same-origin`, or an `Origin` naming this host).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from ..settings import Settings
from .sessions import Sessions

VIEW, ADMIN = "view", "admin"
COOKIE = "vllm_gateway_session"


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class Access:
    def __init__(self, settings: Settings) -> None:
        admin = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
        metrics = settings.metrics_api_key.get_secret_value() if settings.metrics_api_key else None
        self.open = not (admin or metrics or settings.api_keys)
        self.client_keys_only = not (admin or metrics) and bool(settings.api_keys)
        self._roles: list[tuple[bytes, str]] = []
        if admin:
            self._roles.append((_digest(admin), ADMIN))
        if metrics:
            self._roles.append((_digest(metrics), VIEW if admin else ADMIN))
        # Playground requests bypass the client keys: with client keys configured they need ADMIN.
        self.playground_role = ADMIN if settings.api_keys else VIEW
        self.sessions = Sessions([k for k in (admin, metrics) if k])

    def role_of_key(self, key: bytes | str | None) -> str | None:
        """Constant time over every operator key, whichever matches."""
        if not key:
            return None
        given = _digest(key)
        found = None
        for digest, role in self._roles:
            if hmac.compare_digest(given, digest):
                found = found or role
        return found

    def role(self, scope: Mapping[str, Any]) -> tuple[str | None, bool]:
        """(the request's role or None, whether it rests on the session cookie)."""
        if self.open:
            return ADMIN, False
        headers = scope["headers"]
        bearer = _bearer(headers)
        if bearer is not None:
            return self.role_of_key(bearer), False
        return self.sessions.role(session_cookie(headers)), True

    def allows(self, scope: Mapping[str, Any], needed: str) -> tuple[bool, str]:
        """Whether the request may do what needs `needed`; else why not (for the 401/403)."""
        role, by_cookie = self.role(scope)
        if role is None:
            if self.client_keys_only:
                return False, ("the operator page and admin routes need metrics_api_key or admin_api_key, and neither "
                               "is configured; set one (GATEWAY_ADMIN_API_KEY) and sign in with it")
            return False, ("sign in at /ui with the admin or metrics key, or send it as `Authorization: Bearer <key>`")
        if needed == ADMIN and role != ADMIN:
            return False, "this needs the admin key (admin_api_key); the key given only lets you watch"
        if by_cookie and scope["method"] not in ("GET", "HEAD") and not same_origin(scope["headers"]):
            return False, "refused: a change through the session cookie must come from the operator page itself"
        return True, ""


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    value = _header(headers, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer":
        return None  # e.g. a proxy's Basic auth in front of the gateway: the cookie decides
    return token.strip()


def session_cookie(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"cookie":
            cookie: SimpleCookie = SimpleCookie()
            try:
                cookie.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no session
                return None
            if COOKIE in cookie:
                return cookie[COOKIE].value
    return None


def same_origin(headers: list[tuple[bytes, bytes]]) -> bool:
    """The browser says the request comes from this origin (`Sec-Fetch-Site`), or, where it does
    not send that, its `Origin` names the host the request was sent to."""
    site = _header(headers, b"sec-fetch-site")
    if site is not None:
        return site == b"same-origin"
    origin = _header(headers, b"origin")
    host = _header(headers, b"host")
    if origin is None or host is None:
        return False
    return urlsplit(origin.decode("latin-1")).netloc.lower() == host.decode("latin-1").lower()


def is_https(scope: Mapping[str, Any]) -> bool:
    """Behind a TLS proxy (RunPod's, a load balancer) the cookie is marked Secure."""
    forwarded = _header(scope["headers"], b"x-forwarded-proto")
    return scope.get("scheme") == "https" or (forwarded is not None and forwarded.split(b",")[0].strip() == b"https")


__all__ = ["ADMIN", "COOKIE", "VIEW", "Access", "is_https", "same_origin", "session_cookie"]
