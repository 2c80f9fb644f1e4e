"""The gateway launching its backends: simulated vLLM servers as real child processes.

Each backend is `python -m vllm_gateway simulate`, started by the gateway's supervisor exactly as it starts
vLLM (same flags, own process group, output relayed). A small wrapper in front of the simulator
can delay its start-up or record, at the moment it starts, whether the previous backend already
answered /health: that is how the start order is checked.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.servers import gateway_settings, running, wait_for
from vllm_gateway.gateway import create_app
from vllm_gateway.supervise.process import group_alive, signal_group

ROOT = str(Path(__file__).resolve().parents[2])
PY = sys.executable

WRAPPER = '''
"""Optionally sleep, or record another server's /health status, then become the real command."""
import os, sys, time, urllib.request
args = sys.argv[1:]
while args[0] != "--":
    option = args.pop(0)
    if option == "--sleep":
        time.sleep(float(args.pop(0)))
    elif option == "--probe":
        url, out = args.pop(0), args.pop(0)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            status = str(opener.open(url + "/health", timeout=2).status)
        except Exception as exc:
            status = type(exc).__name__
        with open(out, "a") as f:
            f.write(status + "\\n")
args.pop(0)
os.execv(args[0], args)
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sim_backend(name: str, model: str, *, kind: str = "chat", before: list[str] | None = None,
                wrapper: Path | None = None, **launch: Any) -> dict[str, Any]:
    """A backend whose process is a simulator, optionally behind the wrapper."""
    command = [PY, "-m", "vllm_gateway", "simulate", "--kind", kind, "--model", "{model}"]
    if before:
        assert wrapper is not None
        command = [PY, str(wrapper), *before, "--", *command]
    launch.setdefault("restart_backoff_initial", 0.2)
    launch.setdefault("stop_timeout", 5)
    return {
        "name": name,
        "url": f"http://127.0.0.1:{free_port()}",
        "launch": {"model": model, "command": command, "env": {"PYTHONPATH": ROOT}, **launch},
    }


@pytest.fixture
def wrapper(tmp_path: Path) -> Path:
    path = tmp_path / "wrapper.py"
    path.write_text(WRAPPER)
    return path


def status(url: str) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in httpx.get(f"{url}/status", timeout=5).json()["backends"]}


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10)


def test_gateway_serves_at_once_starts_backends_in_order_then_routes_to_them(
        wrapper: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    order = tmp_path / "order.txt"
    chat = sim_backend("chat", "sim-chat", before=["--sleep", "1.0"], wrapper=wrapper, warmup=True)
    embed = sim_backend("embed", "sim-embed", kind="embedding", wrapper=wrapper, warmup=True,
                        before=["--probe", chat["url"], str(order)], log_file=str(tmp_path / "{name}.log"))
    with running(create_app(gateway_settings(chat, embed))) as gw:
        # Serving before any backend is ready: alive, not ready, model routes say "come back later".
        assert httpx.get(f"{gw.url}/health").status_code == 200
        assert httpx.get(f"{gw.url}/ready").status_code == 503
        early = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "sim-chat", "messages": []})
        assert early.status_code == 503 and int(early.headers["retry-after"]) >= 1
        assert early.json()["error"]["code"] == "backend_unavailable"
        assert status(gw.url)["chat"]["state"] == "starting"

        assert wait_for(lambda: httpx.get(f"{gw.url}/ready").status_code == 200, timeout=30)
        # The second process started only once the first answered /health with 200.
        assert order.read_text().split() == ["200"]

        sdk = client(gw.url)
        reply = sdk.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert reply.choices[0].message.content
        assert len(sdk.embeddings.create(model="sim-embed", input="hello").data[0].embedding) > 0
        assert {m.id for m in sdk.models.list().data} == {"sim-chat", "sim-embed"}

        states = status(gw.url)
        for name in ("chat", "embed"):
            info = states[name]
            assert info["state"] == "ready" and info["launched"] is True
            assert isinstance(info["pid"], int) and info["restarts"] == 0 and info["uptime_s"] >= 0
            assert info["last_exit_code"] is None and info["last_error"] is None

        # Warm-up: one tiny request of the right kind reached each backend before any user request.
        chat_requests = httpx.get(f"{chat['url']}/_sim/stats").json()["requests"]
        assert chat_requests[0]["path"] == "/v1/chat/completions" and chat_requests[0]["body"]["max_tokens"] == 1
        embed_requests = httpx.get(f"{embed['url']}/_sim/stats").json()["requests"]
        assert embed_requests[0]["path"] == "/v1/embeddings"  # after a 404 from the chat route
        pids = [states["chat"]["pid"], states["embed"]["pid"]]

    assert not any(group_alive(pid) for pid in pids)
    err = capfd.readouterr().err
    assert "[chat] simulated vLLM server (chat) serving sim-chat" in err
    assert "[embed] simulated vLLM server (embedding) serving sim-embed" in err
    assert "serving sim-embed" in (tmp_path / "embed.log").read_text()


def test_a_launched_backend_keeps_idle_connections_open_past_vllms_default_keep_alive() -> None:
    """The process gets VLLM_HTTP_TIMEOUT_KEEP_ALIVE and the gateway keeps its idle connections a
    second less: after a pause longer than vLLM's default 5 s, the next request goes out on the
    same connection (no handshake on the gateway's core). Health checks are spaced out so that
    they do not keep the connection busy meanwhile."""
    chat = {**sim_backend("chat", "sim-chat"), "keep_alive": 8}
    with running(create_app(gateway_settings(chat, health_check_interval=60))) as gw:
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        sdk = client(gw.url)
        ask = dict(model="sim-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)

        def last_peer() -> list:
            requests = httpx.get(f"{chat['url']}/_sim/stats").json()["requests"]
            return [r["client"] for r in requests if r["path"] == "/v1/chat/completions"][-1]

        sdk.chat.completions.create(**ask)
        first = last_peer()
        time.sleep(6.5)
        sdk.chat.completions.create(**ask)
        assert last_peer() == first


def test_a_killed_backend_answers_503_while_restarting_then_serves_again() -> None:
    chat = sim_backend("chat", "sim-chat", restart_backoff_initial=1.0)
    with running(create_app(gateway_settings(chat))) as gw:
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        old = status(gw.url)["chat"]["pid"]
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: status(gw.url)["chat"]["state"] != "ready", timeout=10)

        down = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "sim-chat", "messages": []})
        assert down.status_code == 503 and "retry-after" in down.headers
        assert httpx.get(f"{gw.url}/ready").status_code == 503
        info = status(gw.url)["chat"]
        assert info["state"] == "restarting" and info["last_exit_code"] == -9
        assert "signal SIGKILL" in info["last_error"]

        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        info = status(gw.url)["chat"]
        assert info["restarts"] == 1 and info["pid"] != old and info["last_exit_code"] == -9
        page = httpx.get(f"{gw.url}/metrics").text
        assert 'gateway_backend_restarts_total{backend="chat"} 1.0' in page
        reply = client(gw.url).chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        new = info["pid"]
    assert not group_alive(old) and not group_alive(new)


def test_an_exception_during_start_up_leaves_no_process() -> None:
    app = create_app(gateway_settings(sim_backend("chat", "sim-chat")))
    registry = app.state.registry
    seen: list[int] = []

    async def broken_first_check() -> None:
        while registry.backends["chat"].pid is None:  # the backend's process exists...
            await asyncio.sleep(0.01)
        seen.append(registry.backends["chat"].pid)
        raise RuntimeError("start-up broke")  # ...when start-up fails

    app.state.health.check_all = broken_first_check

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RuntimeError, match="start-up broke"):
        asyncio.run(asyncio.wait_for(start(), 30))
    assert seen and not group_alive(seen[0])
    assert registry.backends["chat"].state == "stopped"


def test_a_backend_whose_health_keeps_failing_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    """vLLM's API server can outlive its engine and answer /health with 503: restart it."""
    chat = sim_backend("chat", "sim-chat", unhealthy_restart_after=1, restart_backoff_initial=1.0)
    with running(create_app(gateway_settings(chat, health_check_interval=0.2))) as gw:
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        old = status(gw.url)["chat"]["pid"]
        assert httpx.post(f"{chat['url']}/_sim/health", json={"status": 503}, timeout=5).status_code == 200

        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "restarting", timeout=20)
        info = status(gw.url)["chat"]
        assert info["last_error"].startswith("restarted: /health failed for ")
        assert "(last: health check answered 503); launch.unhealthy_restart_after is 1 s" in info["last_error"]
        assert wait_for(lambda: not group_alive(old), timeout=10)  # its whole group ended, as on stop
        assert "GET /health has failed for" in caplog.text and "launch.unhealthy_restart_after" in caplog.text

        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        info = status(gw.url)["chat"]
        assert info["restarts"] == 1 and info["pid"] != old and info["last_error"] is None
        assert info["circuit"] == "closed"  # tripped by the failed checks; the new process answered /health
        assert info["last_exit_code"] == -signal.SIGTERM  # the simulator's uvicorn re-raises SIGTERM
        assert 'gateway_backend_restarts_total{backend="chat"} 1.0' in httpx.get(f"{gw.url}/metrics").text
        reply = client(gw.url).chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        new = info["pid"]
    assert not group_alive(new)


def test_a_backend_that_keeps_failing_is_given_up_after_max_restarts() -> None:
    code = "import sys; print('error: unrecognized arguments: --bad'); sys.exit(3)"
    broken = {"name": "broken", "url": f"http://127.0.0.1:{free_port()}",
              "launch": {"model": "m", "command": [PY, "-c", code], "max_restarts": 2, "restart_backoff_initial": 0.1}}
    with running(create_app(gateway_settings(broken, sim_backend("chat", "sim-chat")))) as gw:
        assert wait_for(lambda: "gave up" in (status(gw.url)["broken"]["last_error"] or ""), timeout=30)
        info = status(gw.url)["broken"]
        assert info["state"] == "failed" and info["restarts"] == 2 and info["pid"] is None
        assert info["last_exit_code"] == 3
        message = info["last_error"]
        assert message.startswith("gave up after 3 consecutive failures (launch.max_restarts is 2)")
        assert "fix the cause, then restart the gateway" in message
        assert message.endswith("last output:\nerror: unrecognized arguments: --bad")
        assert 'gateway_backend_restarts_total{backend="broken"} 2.0' in httpx.get(f"{gw.url}/metrics").text
        supervisor = gw.app.state.supervisor
        assert supervisor.tasks[0].done()  # its task has ended: nothing will start it again
        refused = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": []})
        assert refused.status_code == 503 and "no longer restarted" in refused.json()["error"]["message"]
        # The other backend still got its turn to load, and serves.
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        reply = client(gw.url).chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    assert gw.app.state.registry.backends["broken"].state == "failed"  # stopping does not hide it


# -- the `serve` command as users run it ----------------------------------------------------------

def _config(tmp_path: Path, *backends: dict[str, Any]) -> tuple[Path, int]:
    import yaml

    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": port, "health_check_interval": 0.5,
                                      "backends": list(backends)}))
    return config, port


def _serve(tmp_path: Path, *backends: dict[str, Any]) -> tuple[subprocess.Popen, str, Path]:
    config, port = _config(tmp_path, *backends)
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([PY, "-m", "vllm_gateway", "serve", "--config", str(config)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


def _ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    assert wait_for(up, timeout=40, interval=0.1), log.read_text()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_its_backends_on_sigterm_and_sigint(tmp_path: Path, how: signal.Signals) -> None:
    proc, url, log = _serve(tmp_path, sim_backend("chat", "sim-chat"), sim_backend("embed", "e", kind="embedding"))
    pids: list[int] = []
    try:
        _ready(proc, url, log)
        pids = [b["pid"] for b in status(url).values()]
        proc.send_signal(how)
        # uvicorn re-raises the signal once shut down, so the exit status names it (or is 130 for ^C).
        assert proc.wait(30) in (0, -how, 128 + how), log.read_text()
        assert "Application shutdown complete" in log.read_text()
        assert not any(group_alive(pid) for pid in pids), log.read_text()
        text = log.read_text()
        assert "[chat] simulated vLLM server" in text and "is ready" in text
    finally:
        _cleanup(proc, pids)


def test_a_gateway_killed_outright_takes_its_backends_down(tmp_path: Path) -> None:
    """SIGKILL runs no shutdown code: the parent-death signal is the safety net."""
    proc, url, log = _serve(tmp_path, sim_backend("chat", "sim-chat"))
    pids: list[int] = []
    try:
        _ready(proc, url, log)
        pids = [b["pid"] for b in status(url).values()]
        proc.kill()
        proc.wait(10)
        assert wait_for(lambda: not any(group_alive(pid) for pid in pids), timeout=15), log.read_text()
    finally:
        _cleanup(proc, pids)


def test_serve_refuses_several_workers_with_launched_backends(tmp_path: Path) -> None:
    config, _ = _config(tmp_path, sim_backend("chat", "sim-chat"))
    done = subprocess.run([PY, "-m", "vllm_gateway", "serve", "--config", str(config), "--workers", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "workers: 2 gateway workers cannot launch backends (`launch:` in chat)" in done.stderr


def _cleanup(proc: subprocess.Popen, pids: list[int]) -> None:
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait(10)
    for pid in pids:
        signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(group_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
