"""The container entrypoint run for real on this machine, as the image runs it (minus tini).

The command is the Dockerfile's own CMD handed to deploy/docker/entrypoint.sh; the backends are
simulated vLLM servers on loopback; the configuration comes from environment variables alone, as
a RunPod template passes it, or from a file at the path the image looks at. Clients are the
official `openai` SDK and the image's HEALTHCHECK script.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerfile
import httpx
import openai
import pytest

from tests.servers import CHAT, EMBEDDING, Running, running, simulator

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy/docker/entrypoint.sh"
HEALTHCHECK = ROOT / "deploy/docker/healthcheck.py"
EMBED_MODEL, GUARD_MODEL = "Qwen/Qwen3-Embedding-0.6B", "Qwen/Qwen3Guard-Gen-8B"
KEY = "test-gateway-key"


def image_cmd() -> list[str]:
    """The CMD of the default (vLLM) target: what `docker run IMAGE` hands the entrypoint."""
    commands = list(dockerfile.parse_file(str(ROOT / "Dockerfile")))
    return list([c for c in commands if c.cmd == "CMD"][-1].value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This machine's environment without GATEWAY_*, the venv's commands first on PATH, and a
    default-config path that does not exist (so a stray /etc/vllm-gateway cannot interfere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DEFAULT_GATEWAY_CONFIG"] = str(tmp_path / "absent.yaml")
    env["RUN_AS_USER"] = ""
    env.update(extra)
    return env


def backends_json(embed: Running, guard: Running) -> str:
    return json.dumps([
        {"name": "embed", "url": embed.url, "models": [EMBED_MODEL], "aliases": ["text-embedding-3-small"]},
        {"name": "guard", "url": guard.url, "models": [GUARD_MODEL], "aliases": ["guard"]},
    ])


@pytest.fixture
def sims() -> Iterator[tuple[Running, Running]]:
    with running(simulator([EMBED_MODEL], EMBEDDING)) as embed, running(simulator([GUARD_MODEL], CHAT)) as guard:
        yield embed, guard


@contextlib.contextmanager
def container(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The entrypoint in its own session; whatever is left of it is ended on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ENTRYPOINT), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the entrypoint exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    pytest.fail(f"no /health within {timeout} s:\n{log.read_text()}")


def healthcheck(env: dict[str, str], path: str = "/health") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK), path], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, as tini forwards `docker stop`: the gateway itself (the entrypoint exec'd into it,
    same pid) shuts down gracefully; uvicorn then re-raises the signal, hence -SIGTERM."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) in (0, -signal.SIGTERM)
    output = log.read_text()
    assert "Application shutdown complete" in output
    assert f"Finished server process [{proc.pid}]" in output, "the entrypoint did not exec the gateway"


def test_environment_only_configuration_serves_the_openai_sdk(sims: Any, tmp_path: Path) -> None:
    embed, guard = sims
    port = free_port()
    env = base_env(tmp_path, GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), GATEWAY_API_KEYS=KEY,
                   GATEWAY_BACKENDS=backends_json(embed, guard), GATEWAY_HEALTH_CHECK_INTERVAL="0.5",
                   HF_HOME=str(tmp_path / "hf"), VLLM_CACHE_ROOT=str(tmp_path / "vllm"))
    url, log = f"http://127.0.0.1:{port}", tmp_path / "container.log"
    with container(image_cmd(), env, log) as proc:
        wait_healthy(proc, url, log)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=10)
        vectors = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0
        chat = client.chat.completions.create(model="guard", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content
        stream = client.chat.completions.create(model=GUARD_MODEL, messages=[{"role": "user", "content": "hi"}],
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert {EMBED_MODEL, GUARD_MODEL} <= {m.id for m in client.models.list()}
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()

        assert healthcheck(env, "/health").returncode == 0
        assert healthcheck(env, "/ready").returncode == 0
        assert (tmp_path / "hf").is_dir() and (tmp_path / "vllm").is_dir(), "the entrypoint prepares the caches"
        stop(proc, log)
    output = log.read_text()
    assert output.index("configuration OK") < output.index("Uvicorn running on"), "routing table before serving"
    assert f"backend guard -> {guard.url}" in output
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def test_file_at_the_default_path_configures_server_and_healthcheck(sims: Any, tmp_path: Path) -> None:
    embed, guard = sims
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"host: 127.0.0.1\nport: {port}\nbackends: {backends_json(embed, guard)}\n")
    env = base_env(tmp_path, DEFAULT_GATEWAY_CONFIG=str(config))
    url, log = f"http://127.0.0.1:{port}", tmp_path / "container.log"
    with container(image_cmd(), env, log) as proc:
        wait_healthy(proc, url, log)
        models = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0).models.list()
        assert {EMBED_MODEL, GUARD_MODEL} <= {m.id for m in models}
        checked = healthcheck(env)
        assert checked.returncode == 0 and f":{port}/health" in checked.stdout
        stop(proc, log)
    assert healthcheck(env).returncode == 1, "the healthcheck fails once the gateway is gone"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_started_as_root_it_hands_the_caches_over_and_drops_privileges(sims: Any, tmp_path: Path) -> None:
    embed, guard = sims
    user = pwd.getpwnam("nobody")
    cache = tmp_path / "hf"
    (cache / "hub").mkdir(parents=True)
    (cache / "hub" / "left-by-root").write_text("x")
    port = free_port()
    env = base_env(tmp_path, RUN_AS_USER="nobody", HF_HOME=str(cache), GATEWAY_HOST="127.0.0.1",
                   GATEWAY_PORT=str(port), GATEWAY_BACKENDS=backends_json(embed, guard))
    url, log = f"http://127.0.0.1:{port}", tmp_path / "container.log"
    with container(image_cmd(), env, log) as proc:
        wait_healthy(proc, url, log)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert {int(u) for u in uids} == {user.pw_uid}, "the gateway runs as RUN_AS_USER, not root"
        for path in (cache, cache / "hub", cache / "hub" / "left-by-root"):
            assert path.stat().st_uid == user.pw_uid, f"{path} still belongs to uid {path.stat().st_uid}"
        stop(proc, log)


def test_a_bad_configuration_stops_the_container_before_it_serves(tmp_path: Path) -> None:
    port = free_port()
    env = base_env(tmp_path, GATEWAY_PORT=str(port),
                   GATEWAY_BACKENDS=json.dumps([{"name": "chat", "ulr": "http://127.0.0.1:9"}]))
    done = subprocess.run([str(ENTRYPOINT), *image_cmd()], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "ulr: unknown key" in done.stderr and "Uvicorn" not in done.stderr

    env = base_env(tmp_path, GATEWAY_CONFIG=str(tmp_path / "missing.yaml"))
    done = subprocess.run([str(ENTRYPOINT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 64 and "missing.yaml is missing or unreadable" in done.stderr


def test_other_commands_run_as_given(tmp_path: Path) -> None:
    env = base_env(tmp_path, GATEWAY_BACKENDS=json.dumps([{"name": "chat", "url": "http://127.0.0.1:9"}]))
    done = subprocess.run([str(ENTRYPOINT), "check-config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "backend chat -> http://127.0.0.1:9" in done.stdout
    done = subprocess.run([str(ENTRYPOINT), "sh", "-c", "echo ran as given"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "ran as given\n"
