"""Graceful shutdown: /ready turns 503 at once, new requests are refused, in-flight streams finish
within the grace period and are closed cleanly after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from tests.servers import CHAT, gateway, running, simulator, wait_for

STREAM = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_begin_shutdown_flips_ready_and_refuses_new_work_but_finishes_streams():
    with running(simulator(["sim-chat"], CHAT, token_delay=0.02)) as sim, gateway({"name": "chat", "url": sim.url}) as gw:
        events: list[str] = []
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json={**STREAM, "max_tokens": 25}, timeout=10) as response:
            lines = response.iter_lines()
            events.append(next(lines))
            gw.app.state.begin_shutdown()
            ready = httpx.get(f"{gw.url}/ready")
            assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
            refused = httpx.post(f"{gw.url}/v1/chat/completions", json={**STREAM, "max_tokens": 1})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
            assert refused.headers["retry-after"] == "1"
            events.extend(line for line in lines if line)
        assert events[-1] == "data: [DONE]"
        assert sum('"content":" ' in e or '"content":"' in e for e in events) >= 25


def _serve(tmp_path, backend_url: str, grace: float) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "host": "127.0.0.1", "port": port, "shutdown_grace": grace, "log_level": "warning",
        "backends": [{"name": "chat", "url": backend_url}],
    }))
    process = subprocess.Popen([sys.executable, "-m", "vllm_gateway", "serve", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_for(up, timeout=20, interval=0.1):
        process.kill()
        raise AssertionError(process.communicate()[0].decode())
    return process, url


def _stream_in_background(url: str, max_tokens: int) -> tuple[threading.Thread, list[str], threading.Event]:
    events: list[str] = []
    first = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**STREAM, "max_tokens": max_tokens}, timeout=30) as r:
            for line in r.iter_lines():
                if line:
                    events.append(line)
                    first.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert first.wait(10)
    return thread, events, first


@pytest.mark.parametrize("grace,max_tokens,completes", [(5.0, 20, True), (0.5, 400, False)],
                         ids=["stream-finishes-within-grace", "stream-closed-cleanly-after-grace"])
def test_sigterm_drains_then_closes_cleanly(tmp_path, grace, max_tokens, completes):
    with running(simulator(["sim-chat"], CHAT, token_delay=0.05)) as sim:
        process, url = _serve(tmp_path, sim.url, grace)
        try:
            thread, events, _ = _stream_in_background(url, max_tokens)
            sent_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            thread.join(20)
            assert not thread.is_alive()
            process.wait(20)
            stopped_after = time.monotonic() - sent_at
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode in (0, -signal.SIGTERM)
        assert events[-1] == "data: [DONE]"
        chunks = [e for e in events if '"delta":{"content"' in e]
        if completes:
            assert len(chunks) == max_tokens
            assert '"shutting_down"' not in events[-2]
        else:
            assert len(chunks) < max_tokens
            assert '"code":"shutting_down"' in events[-2]
            assert stopped_after < 10
        assert wait_for(lambda: sim.app.state.running == 0, timeout=5), "no generation left running upstream"


def test_an_open_operator_page_does_not_hold_the_shutdown(tmp_path):
    """The page's event stream never ends by itself: SIGTERM ends it at once, so the gateway exits
    without waiting out its grace period (30 s here)."""
    with running(simulator(["sim-chat"], CHAT)) as sim:
        process, url = _serve(tmp_path, sim.url, grace=30)
        try:
            with httpx.stream("GET", f"{url}/ui/events", timeout=10) as events:
                lines = events.iter_lines()
                assert next(lines) == "retry: 2000" and next(lines) == "event: hello"
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                rest = list(lines)  # the stream ends (a tick or two may come first)
            assert process.wait(20) in (0, -signal.SIGTERM)
            took = time.monotonic() - started
            assert took < 15, took
            assert all(not line or line.startswith(("event:", "data:")) for line in rest)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
