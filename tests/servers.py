"""Real uvicorn servers on loopback for the tests, each in its own thread and event loop.

The official `openai` SDK's sync client blocks, so the servers it talks to must run elsewhere;
a thread per server keeps start-up fast and lets tests read a simulator's state directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from vllm_gateway.gateway import create_app
from vllm_gateway.http.serving import bind, server
from vllm_gateway.settings import Settings
from vllm_gateway.simulator import CHAT, EMBEDDING, Simulator, SimulatorConfig


@dataclass
class Running:
    app: Any
    url: str
    loop: asyncio.AbstractEventLoop
    uvicorn: Any

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's own loop (to inspect or poke its state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def running(app: Any, port: int = 0, graceful: float | None = 5, access_log: bool = False) -> Iterator[Running]:
    sock = bind("127.0.0.1", port)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = getattr(getattr(app, "state", None), "settings", None)
    fast_path = settings.fast_path if settings is not None else True  # GATEWAY_FAST_PATH=false: stock uvicorn
    uv = server(app, graceful=graceful, access_log=access_log, fast_path=fast_path)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(uv.serve(sockets=[sock]),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server for {app!r} did not start")
        time.sleep(0.01)
    try:
        yield Running(app, url, loop, uv)
    finally:
        uv.should_exit = True
        thread.join(15)
        loop.close()
        sock.close()


def simulator(models: list[str], kind: str = CHAT, **options: Any) -> Simulator:
    return Simulator(SimulatorConfig(models=models, kind=kind, **options))


def gateway_settings(*backends: dict[str, Any], **options: Any) -> Settings:
    options.setdefault("health_check_interval", 0.5)
    return Settings(backends=list(backends), **options)


@contextlib.contextmanager
def gateway(*backends: dict[str, Any], **options: Any) -> Iterator[Running]:
    with running(create_app(gateway_settings(*backends, **options))) as gw:
        yield gw


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def sim_stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_sim/stats", timeout=5).json()


__all__ = ["CHAT", "EMBEDDING", "Running", "gateway", "gateway_settings", "running", "sim_stats", "simulator", "wait_for"]
