"""vLLM's dev-mode routes (`VLLM_SERVER_DEV_MODE=1`; without it they are plain 404s).

From `entrypoints/serve/dev/{sleep,rpc,cache}/api_router.py`: `POST /sleep?level=0|1|2&mode=
abort|wait|keep` answers `{"status": "sleeping", "level": N}` once asleep; `POST /wake_up[?tags=
weights&tags=kv_cache&tags=scheduling]` answers `{"status": "awake"|"sleeping", "tags": [...]|null}`;
`GET /is_sleeping`; `POST /release_kv_cache_memory`; `POST /collective_rpc {"method": ...}` (the
simulator knows `reload_weights`); `POST /reset_prefix_cache`. Bad query values get FastAPI's
validation error in vLLM's shape; an engine call that fails gets vLLM's 500.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from . import shapes
from .engine import Engine
from .metrics import SimMetrics
from .sleep import OperationFailed, SleepMode
from .wire import Handler, Receive, Scope, Send, query, respond

MODES = ("abort", "wait", "keep")
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_TRUE, _FALSE = ("1", "on", "t", "true", "y", "yes"), ("0", "off", "f", "false", "n", "no")


class DevRoutes:
    def __init__(self, sleep: SleepMode, engine: Engine, metrics: SimMetrics) -> None:
        self.sleep_mode, self.engine, self.metrics = sleep, engine, metrics

    def routes(self) -> dict[str, tuple[str, Handler]]:
        """path -> (the one method FastAPI registered, handler)."""
        return {"/sleep": ("POST", self.sleep), "/wake_up": ("POST", self.wake_up),
                "/is_sleeping": ("GET", self.is_sleeping), "/release_kv_cache_memory": ("POST", self.release_kv_cache),
                "/collective_rpc": ("POST", self.collective_rpc), "/reset_prefix_cache": ("POST", self.reset_prefix_cache)}

    async def sleep(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        params = dict(query(scope))  # FastAPI keeps the last of repeated scalars
        errors: list[dict[str, Any]] = []
        level = _integer(params.get("level", "1"), "query.level", 0, 2, errors)
        mode = params.get("mode", "abort")
        if mode not in MODES:
            expected = "'abort', 'wait' or 'keep'"
            errors.append({"type": "literal_error", "loc": "query.mode", "msg": f"Input should be {expected}",
                           "input": mode, "ctx": {"expected": expected}})
        if errors or level is None:
            await respond(send, 400, shapes.validation_error(errors))
            return
        try:
            with self.metrics.sleep_operation("sleep"):
                await self.sleep_mode.sleep(level, mode)
        except OperationFailed as exc:
            await respond(send, 500, _internal(exc))
            return
        await respond(send, 200, orjson.dumps({"status": "sleeping", "level": level}))

    async def wake_up(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        tags = [value for key, value in query(scope) if key == "tags"] or None
        try:
            with self.metrics.sleep_operation("wake"):
                awake = await self.sleep_mode.wake_up(tags)
        except OperationFailed as exc:
            await respond(send, 500, _internal(exc))
            return
        await respond(send, 200, orjson.dumps({"status": "awake" if awake else "sleeping", "tags": tags}))

    async def is_sleeping(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        await respond(send, 200, orjson.dumps({"is_sleeping": self.sleep_mode.is_sleeping}))

    async def release_kv_cache(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        try:
            with self.metrics.sleep_operation("release_kv_cache_memory"):
                self.sleep_mode.release_kv_cache()
        except OperationFailed as exc:
            await respond(send, 500, _internal(exc))
            return
        await respond(send, 200, orjson.dumps({"status": "kv_cache_released"}))

    async def collective_rpc(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        try:
            data = json.loads(body)
        except ValueError as exc:
            await respond(send, 400, shapes.error(f"JSON decode error: {exc}", "Bad Request", 400))
            return
        if not isinstance(data, dict):
            await respond(send, 400, shapes.error("Request body must be a JSON object", "Bad Request", 400))
            return
        method = data.get("method")
        if method is None:
            await respond(send, 400, shapes.error("Missing 'method' in request body", "Bad Request", 400))
            return
        if method != "reload_weights":
            backend = self.sleep_mode.config.executor_backend
            reason = f"'Worker' object has no attribute {method!r}" if backend == "mp" else \
                f"Method {method!r} is not implemented."
            await respond(send, 500, shapes.error(shapes.call_failed("collective_rpc", reason, backend),
                                                  "InternalServerError", 500))
            return
        try:
            self.sleep_mode.reload_weights()
        except OperationFailed as exc:
            await respond(send, 500, _internal(exc))
            return
        await respond(send, 200, orjson.dumps({"results": [None]}))

    async def reset_prefix_cache(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        params = dict(query(scope))
        errors: list[dict[str, Any]] = []
        reset_running = _boolean(params.get("reset_running_requests", "false"), "query.reset_running_requests", errors)
        _boolean(params.get("reset_external", "false"), "query.reset_external", errors)
        if errors:
            await respond(send, 400, shapes.validation_error(errors))
            return
        # vLLM cannot free blocks that running requests still hold, unless asked to preempt them.
        success = reset_running or not self.engine.running
        await respond(send, 200, orjson.dumps({"success": bool(success)}))


def _internal(exc: Exception) -> bytes:
    return shapes.error(str(exc), "InternalServerError", 500)


def _integer(raw: str, loc: str, low: int, high: int, errors: list[dict[str, Any]]) -> int | None:
    if not _INTEGER.fullmatch(raw):
        errors.append({"type": "int_parsing", "loc": loc,
                       "msg": "Input should be a valid integer, unable to parse string as an integer", "input": raw})
        return None
    value = int(raw)
    if value < low:
        errors.append({"type": "greater_than_equal", "loc": loc, "msg": f"Input should be greater than or equal to {low}",
                       "input": raw, "ctx": {"ge": low}})
    elif value > high:
        errors.append({"type": "less_than_equal", "loc": loc, "msg": f"Input should be less than or equal to {high}",
                       "input": raw, "ctx": {"le": high}})
    return value


def _boolean(raw: str, loc: str, errors: list[dict[str, Any]]) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() not in _FALSE:
        errors.append({"type": "bool_parsing", "loc": loc,
                       "msg": "Input should be a valid boolean, unable to interpret input", "input": raw})
    return False
