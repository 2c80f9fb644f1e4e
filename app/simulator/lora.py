"""Runtime LoRA as vLLM serves it (`entrypoints/openai/models/serving.py`, `lora/worker_manager.py`).

Two layers, as in vLLM. The API server's registry is every adapter a client may name (listed in
`/v1/models`, no limit). The engine keeps up to `max_cpu_loras` adapters read into CPU memory,
least recently used first out; a request for one that fell out is read from disk again when it is
scheduled. At most `max_loras` distinct adapters run at once (the scheduler, `engine.py`).
Unloading only forgets the name (vLLM 0.32 leaves the engine's copy to age out).

With `VLLM_ALLOW_RUNTIME_LORA_UPDATING`, `POST /v1/load_lora_adapter` and
`/v1/unload_lora_adapter` answer vLLM's plain-text successes and its errors.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

import orjson

from . import shapes
from .adapters import AdapterFiles, AdapterInvalid, AdapterNotFound, read_adapter
from .config import SimulatorConfig
from .sleep import HANG_LIMIT
from .state import SimulatorState
from .validation import json_object, required_strings
from .wire import Handler, Receive, Scope, Send, respond


@dataclass
class Adapter:
    name: str
    path: str  # as the client gave it: the card's `root`
    int_id: int
    rank: int
    base_model_name: str | None = None  # `--lora-modules` JSON's: the card's `parent`
    base_model_name_or_path: str | None = None  # from adapter_config.json


NOT_ENABLED = "LoRA is not enabled. Use --enable-lora to enable LoRA."


class LoadFailed(Exception):
    """A refused load (or a failed re-read): the status and vLLM's error body to answer with."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(body.decode())
        self.status, self.body = status, body


class LoRAManager:
    def __init__(self, config: SimulatorConfig, state: SimulatorState) -> None:
        self.config, self.state = config, state
        self.adapters: dict[str, Adapter] = {}
        self.cpu: collections.OrderedDict[int, Adapter] = collections.OrderedDict()  # the engine's LRU
        self._next_id = 0
        self._locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    def load_static(self) -> None:
        """`--lora-modules` at start-up (blocking reads, before serving); a failure stops the server."""
        for module in self.config.lora_modules:
            try:
                self._check(module.name, module.path, inplace=False)
                if not self.config.enable_lora:
                    raise _add_lora_failed(NOT_ENABLED, self.config.executor_backend)
                try:
                    files = read_adapter(module.path, self.config.max_lora_rank)
                except AdapterNotFound:
                    raise _not_found(module.name, module.path) from None
                except AdapterInvalid as exc:
                    raise _add_lora_failed(str(exc), self.config.executor_backend) from None
            except LoadFailed as exc:
                raise ValueError(orjson.loads(exc.body)["error"]["message"]) from None
            base = module.base_model_name if module.base_model_name in self.config.models else None
            self._register(Adapter(module.name, module.path, self._new_id(), files.rank, base,
                                   files.base_model_name_or_path))
            self.state.lora_loads.append({"name": module.name, "path": module.path, "kind": "static",
                                          "time": time.time(), "status": 200})

    def routes(self) -> dict[str, tuple[str, Handler]]:
        return {"/v1/load_lora_adapter": ("POST", self.load_route), "/v1/unload_lora_adapter": ("POST", self.unload_route)}

    async def load(self, name: str, path: str, inplace: bool) -> str:
        async with self._locks[name]:
            self._check(name, path, inplace)
            known = self.adapters.get(name)
            adapter = Adapter(name, path, known.int_id if known else self._new_id(), 0)
            files = await self._read(adapter, "load")
            adapter.rank, adapter.base_model_name_or_path = files.rank, files.base_model_name_or_path
            self._register(adapter)
            return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str) -> str:
        if not name:
            raise _user_error("'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.adapters:
            raise LoadFailed(404, shapes.error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404))
        del self.adapters[name]
        self.state.lora_unloads.append({"name": name, "time": time.time()})
        return f"Success: LoRA adapter '{name}' removed successfully."

    async def activate(self, adapter: Adapter) -> None:
        """As the worker does when a request for it is scheduled: read it again if it fell out."""
        async with self._locks[adapter.name]:  # requests arriving together read it once
            if adapter.int_id in self.cpu:
                self.cpu.move_to_end(adapter.int_id)
                return
            await self._read(adapter, "reload")
            self._cache(adapter)

    def stats(self) -> list[dict[str, object]]:
        return [{"name": a.name, "path": a.path, "id": a.int_id, "rank": a.rank, "in_cpu_memory": a.int_id in self.cpu,
                 "base_model_name_or_path": a.base_model_name_or_path} for a in self.adapters.values()]

    async def _read(self, adapter: Adapter, kind: str) -> AdapterFiles:
        record: dict[str, object] = {"name": adapter.name, "path": adapter.path, "kind": kind, "time": time.time(),
                                     "status": 200}
        self.state.lora_loads.append(record)
        try:
            if not self.config.enable_lora:
                raise AdapterInvalid(NOT_ENABLED)
            fault = self.state.take_fault("lora_load")
            if fault == "hang":
                await self.state.hold(HANG_LIMIT)
            elif fault == "fail":
                raise AdapterInvalid("simulated failure (POST /_sim/faults)")
            await asyncio.sleep(self.config.lora_load_delay)
            # Disk reads have no asyncio form: a worker thread keeps them off the event loop.
            return await asyncio.to_thread(read_adapter, adapter.path, self.config.max_lora_rank)
        except AdapterNotFound:
            record["status"] = 404
            raise _not_found(adapter.name, adapter.path) from None
        except AdapterInvalid as exc:
            record["status"] = 500
            raise _add_lora_failed(str(exc), self.config.executor_backend) from None

    def _check(self, name: str, path: str, inplace: bool) -> None:
        if not name or not path:
            raise _user_error("Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.config.models:
            raise _user_error(f"The lora adapter '{name}' conflicts with a served base model.")
        if not inplace and name in self.adapters:
            raise _user_error(f"The lora adapter '{name}' has already been loaded. If you want to load the "
                              "adapter in place, set 'load_inplace' to True.")

    def _register(self, adapter: Adapter) -> None:
        self.adapters[adapter.name] = adapter
        self.cpu.pop(adapter.int_id, None)  # in place: the old weights go first
        self._cache(adapter)

    def _cache(self, adapter: Adapter) -> None:
        while len(self.cpu) >= self.config.cpu_lora_slots:
            self.cpu.popitem(last=False)
        self.cpu[adapter.int_id] = adapter

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def load_route(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        data = await json_object(scope, send, body)
        if data is None or not await required_strings(send, data, ("lora_name", "lora_path")):
            return
        try:
            text = await self.load(data["lora_name"], data["lora_path"], bool(data.get("load_inplace", False)))
        except LoadFailed as exc:
            await respond(send, exc.status, exc.body)
            return
        await respond(send, 200, text.encode(), content_type=None)

    async def unload_route(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        data = await json_object(scope, send, body)
        if data is None or not await required_strings(send, data, ("lora_name",)):
            return
        try:
            text = self.unload(data["lora_name"])
        except LoadFailed as exc:
            await respond(send, exc.status, exc.body)
            return
        await respond(send, 200, text.encode(), content_type=None)


def _user_error(message: str) -> LoadFailed:
    return LoadFailed(400, shapes.error(message, "InvalidUserInput", 400))


def _not_found(name: str, path: str) -> LoadFailed:
    message = shapes.sanitize(f"Loading lora {name} failed: No adapter found for {path}")
    return LoadFailed(404, shapes.error(message, "NotFoundError", 404))


def _add_lora_failed(reason: str, backend: str) -> LoadFailed:
    """The worker's add_lora raised: vLLM's API passes the message on as a 500."""
    return LoadFailed(500, shapes.error(shapes.call_failed("add_lora", reason, backend), "InternalServerError", 500))
