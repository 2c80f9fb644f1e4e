"""The gateway's server protocol: uvicorn's httptools protocol with three additions.

- its transport is a `http.downstream.HeadHoldingTransport` (a response head leaves with its body);
- each HTTP request's scope offers a `http.downstream.Downstream` in `scope["extensions"]`, through
  which the exchange pipes a stream's chunks and hears of the client leaving;
- plain POSTs to the app's model routes (`api.app.GatewayApp.fast_routes`) are served by a
  `http.lean_cycle.LeanCycle` instead of uvicorn's request cycle (bench/NOTES.md section 9, row 3).

Everything it uses of uvicorn is listed in `http.uvicorn_compat`; serving falls back to stock
uvicorn when that module says the installed version is not one this was tested with.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httptools

from .downstream import HeadHoldingTransport, downstream_of, offer
from .lean_cycle import LeanCycle
from .uvicorn_compat import HttpToolsProtocol


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, (tuple, list)) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


class GatewayHttpToolsProtocol(HttpToolsProtocol):
    """Module level: several workers are spawned processes, which receive it pickled."""

    _lean_routes: dict[str, Any] | None

    # As uvicorn's own: asyncio.Protocol declares BaseTransport, a TCP server passes a Transport.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop))
        if self.client is None:  # IPv6: uvicorn reads only 2-tuples from the transport's extra info
            self.client = _address(transport.get_extra_info("peername"))
            self.server = _address(transport.get_extra_info("sockname"))
        # None with the access log on (uvicorn's cycle writes it) or a concurrency limit (its 503s).
        routes = getattr(self.app, "fast_routes", None)
        self._lean_routes = routes if routes and not self.access_log and self.limit_concurrency is None else None

    def _start_lean(self) -> bool:
        """A POST to a model route, HTTP/1.1, nothing unusual: served by a `LeanCycle`.
        Anything else (and a request pipelined behind one still running) is uvicorn's."""
        parser = self.parser
        cycle = self.cycle
        if (parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or self.expect_100_continue
                or parser.should_upgrade() or (cycle is not None and not cycle.response_complete)
                or self.root_path):
            return False
        try:
            parsed = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            return False
        raw_path = parsed.path
        if b"%" in raw_path:
            return False
        path = raw_path.decode("ascii")
        endpoint = self._lean_routes.get(path) if self._lean_routes else None
        if endpoint is None:
            return False
        scope = cast(dict[str, Any], self.scope)
        scope["method"] = "POST"
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = parsed.query or b""
        lean = LeanCycle(scope, self.transport, self.flow, self.loop, self.server_state.default_headers,
                         parser.should_keep_alive(), self.on_response_complete, self.logger)
        # The protocol reads only what `http.uvicorn_compat.CYCLE_ATTRIBUTES` lists, which a
        # LeanCycle has too (checked by tests/unit/http/test_uvicorn_compat.py).
        self.cycle = cast(Any, lean)
        offer(scope, lean)
        self._start_asgi_task(self.cycle, endpoint)  # uvicorn's: its contextvars option included
        return True

    def on_headers_complete(self) -> None:
        if self._lean_routes and self._start_lean():
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not a protocol upgrade
            offer(cast(dict[str, Any], self.scope), cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:
            downstream = downstream_of(cast(dict[str, Any], cycle.scope))
            if downstream is not None:
                downstream.lost()


__all__ = ["GatewayHttpToolsProtocol"]
