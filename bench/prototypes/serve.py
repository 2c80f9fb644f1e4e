"""PROTOTYPE launcher (bench only): `vllm-gateway` with hot-path changes patched in at start-up.

app/ is not edited: each change is applied to the imported modules before the CLI runs, so its
effect can be measured by bench/run.py (`--prototype transport,client,dispatch`) against the stock
gateway. Pick changes with BENCH_PROTOTYPE (comma-separated):

- transport: backend clients use bench/prototypes/lean_transport.LeanTransport instead of httpcore;
- client:    backend clients skip httpx.AsyncClient's per-request auth/redirect/cookie/event-hook
             machinery for forwarded (streamed) requests and call the transport directly;
- dispatch:  a plain ASGI dispatcher answers the model routes before FastAPI/Starlette's
             middleware stack and router (the rest of the app, lifespan included, is unchanged);
- gc:        start-up objects frozen out of the cyclic collector and a larger generation-0
             threshold, so young-object collections run less often under load.

    BENCH_PROTOTYPE=transport,dispatch python bench/prototypes/serve.py serve --config gw.yaml
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402


class DirectClient(httpx.AsyncClient):
    """httpx.AsyncClient whose streamed sends go straight to the transport (no auth flow, redirect
    loop, cookie jar, event hooks or elapsed-time wrapper); non-streamed calls are unchanged.
    build_request reuses the joined URL per path and merges headers as plain tuples (no cookies)."""

    def build_request(self, method: str, url: Any, *, content: Any = None, headers: Any = None,
                      **kwargs: Any) -> httpx.Request:
        if kwargs or not isinstance(url, str) or not isinstance(headers, list) or not isinstance(content, bytes):
            return super().build_request(method, url, content=content, headers=headers, **kwargs)
        cache = self.__dict__.setdefault("_bench_urls", {})
        full = cache.get(url)
        if full is None:
            full = self._merge_url(url)
            if len(cache) < 256:
                cache[url] = full
        given = {name.lower() for name, _ in headers}
        defaults = self.__dict__.get("_bench_defaults")
        if defaults is None:
            defaults = self.__dict__["_bench_defaults"] = [(k.lower(), v) for k, v in self.headers.raw]
        merged = [pair for pair in defaults if pair[0] not in given]
        merged.extend(headers)
        return httpx.Request(method, full, content=content, headers=merged,
                             extensions={"timeout": self.timeout.as_dict()})

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        if not stream or kwargs:
            return await super().send(request, stream=stream, **kwargs)
        response = await self._transport_for_url(request.url).handle_async_request(request)
        response.request = request
        return response


class ModelRouteDispatcher:
    """ASGI: model routes go to the proxy directly; everything else to the FastAPI app."""

    def __init__(self, app: Any) -> None:
        from app.api import JSON_MODEL_ROUTES, MULTIPART_MODEL_ROUTES

        self.app = app
        self.proxy = app.state.proxy
        self.routes = {**{p: False for p in JSON_MODEL_ROUTES}, **{p: True for p in MULTIPART_MODEL_ROUTES}}
        self.state = app.state  # for code that reads app.state through the server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            multipart = self.routes.get(scope["path"])
            if multipart is not None:
                await self.proxy.handle(scope, receive, send, scope["path"], multipart)
                return
        await self.app(scope, receive, send)


def apply(changes: set[str]) -> None:
    import app.gateway
    import app.registry

    if changes & {"transport", "client"}:
        from bench.prototypes.lean_transport import LeanTransport

        stock_make_client = app.registry.make_client

        def make_client(url: str, settings: Any, config: Any, transport: Any) -> httpx.AsyncClient:
            if transport is None and "transport" in changes:
                transport = LeanTransport(keepalive_expiry=4.0)
            client = stock_make_client(url, settings, config, transport)
            if "client" in changes:
                client.__class__ = DirectClient
            return client

        app.registry.make_client = make_client
    if "dispatch" in changes:
        stock_create_app = app.gateway.create_app

        def create_app(settings: Any, **kwargs: Any) -> Any:
            fastapi_app = stock_create_app(settings, **kwargs)
            if fastapi_app.user_middleware:  # auth / CORS middleware must see every request
                return fastapi_app
            return ModelRouteDispatcher(fastapi_app)

        app.gateway.create_app = create_app
    if "gc" in changes:
        import gc

        gc.collect()
        gc.freeze()  # everything imported so far is long-lived: never scan it again
        gc.set_threshold(20_000, 50, 100)


def main() -> int:
    changes = {c.strip() for c in os.environ.get("BENCH_PROTOTYPE", "").split(",") if c.strip()}
    unknown = changes - {"transport", "client", "dispatch", "gc"}
    if unknown:
        raise SystemExit(f"unknown BENCH_PROTOTYPE parts: {sorted(unknown)}")
    from app.cli import main as cli_main

    apply(changes)

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
