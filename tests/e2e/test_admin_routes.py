"""`POST /admin/backends/{name}/restart` against launched simulators: a ready backend restarts at
once (no backoff, no failure counted), a given-up one gets another chance, a loading one is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.e2e.test_launch import PY, ROOT, WRAPPER, free_port, sim_backend, status
from tests.servers import gateway_settings, running, wait_for
from vllm_gateway.gateway import create_app

KEY = "admin-key"
ADMIN = {"authorization": f"Bearer {KEY}"}


def restart(url: str, name: str) -> httpx.Response:
    return httpx.post(f"{url}/admin/backends/{name}/restart", headers=ADMIN, timeout=10)


def test_a_ready_backend_restarts_at_once_without_counting_a_failure() -> None:
    chat = sim_backend("chat", "sim-chat", restart_backoff_initial=30)  # a failure's backoff would be 30 s
    with running(create_app(gateway_settings(chat, admin_api_key=KEY))) as gw:
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        old = status(gw.url)["chat"]["pid"]
        answer = restart(gw.url, "chat")
        assert answer.status_code == 202 and answer.json() == {"backend": "chat", "action": "restart",
                                                               "result": "restarting", "state": "ready"}
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "restarting", timeout=5)
        assert "restarted on request" in status(gw.url)["chat"]["last_error"]
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=15)  # well inside the 30 s backoff
        info = status(gw.url)["chat"]
        assert info["pid"] != old and info["restarts"] == 1 and info["last_error"] is None
        assert 'gateway_backend_restarts_total{backend="chat"} 1.0' in httpx.get(f"{gw.url}/metrics").text


def test_a_loading_backend_is_refused_and_a_given_up_one_starts_again(tmp_path: Path) -> None:
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    slow = sim_backend("slow", "sim-slow", before=["--sleep", "4"], wrapper=wrapper)
    code = "import sys; print('error: no such model'); sys.exit(3)"
    broken = {"name": "broken", "url": f"http://127.0.0.1:{free_port()}",
              "launch": {"model": "m", "command": [PY, "-c", code], "max_restarts": 1, "restart_backoff_initial": 0.1}}
    with running(create_app(gateway_settings(slow, broken, admin_api_key=KEY))) as gw:
        assert wait_for(lambda: status(gw.url)["slow"]["state"] == "starting" and status(gw.url)["slow"]["pid"], timeout=10)
        refused = restart(gw.url, "slow")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "restart_refused"
        assert "loading its model" in refused.json()["error"]["message"]
        assert wait_for(lambda: "gave up" in (status(gw.url)["broken"]["last_error"] or ""), timeout=30)
        before = status(gw.url)["broken"]["restarts"]
        again = restart(gw.url, "broken")
        assert again.status_code == 202 and again.json()["result"] == "starting again (it had been given up)"
        # It really ran again (and failed the same way, so it is given up once more).
        assert wait_for(lambda: status(gw.url)["broken"]["restarts"] >= before + 2
                        and "gave up" in (status(gw.url)["broken"]["last_error"] or ""), timeout=30)
        assert status(gw.url)["broken"]["state"] == "failed"


def test_status_command_prints_the_table_with_the_key_from_the_environment() -> None:
    chat = sim_backend("chat", "sim-chat")
    with running(create_app(gateway_settings(chat, api_keys=["client"], admin_api_key=KEY))) as gw:
        assert wait_for(lambda: httpx.get(f"{gw.url}/status", headers=ADMIN).json()["backends"][0]["state"] == "ready",
                        timeout=20)
        command = [sys.executable, "-m", "vllm_gateway", "status", "--url", gw.url]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", "VLLM_GATEWAY_KEY": KEY, "PYTHONPATH": ROOT})
        assert done.returncode == 0, done.stderr
        header, row = [line for line in done.stdout.splitlines() if line.startswith(("BACKEND", "chat"))]
        assert header.split()[:3] == ["BACKEND", "STATE", "MODELS"] and row.split()[:3] == ["chat", "ready", "sim-chat"]
        assert "GPUs: no NVML here" in done.stdout
        refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30,
                                 env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT})
        assert refused.returncode == 1 and "VLLM_GATEWAY_KEY" in refused.stderr
