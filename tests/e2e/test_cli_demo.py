"""The commands a newcomer types, as real processes: `demo`, `simulate`, and `serve --config`.

Each is started on a free loopback port, used with the `openai` SDK, stopped with SIGINT (Ctrl-C),
and must exit cleanly and leave no port open behind it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.servers import CHAT, running, simulator, wait_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refuses(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.ConnectError:
        return True
    return False


class Process:
    """A `python -m vllm_gateway ...` child whose output is collected by a reader thread."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
        self.popen = subprocess.Popen([sys.executable, "-m", "vllm_gateway", *args], cwd=ROOT, env={**clean, **(env or {})},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        assert wait_for(lambda: text in self.output or self.popen.poll() is not None, timeout=timeout)
        assert text in self.output, self.output

    def wait_until_serving(self, url: str, timeout: float = 30) -> None:
        def up() -> bool:
            assert self.popen.poll() is None, f"exited early:\n{self.output}"
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, timeout=timeout, interval=0.1), self.output

    def interrupt(self, timeout: float = 20) -> int:
        self.popen.send_signal(signal.SIGINT)
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            pytest.fail(f"did not stop on SIGINT within {timeout} s:\n{self.output}")
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        self.reader.join(5)
        self.popen.stdout.close()


@contextmanager
def started(args: list[str], env: dict[str, str] | None = None) -> Iterator[Process]:
    process = Process(args, env)
    try:
        yield process
    finally:
        process.kill()


def test_demo_runs_answers_the_sdk_and_stops_on_ctrl_c() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started(["demo", "--port", str(port)]) as demo:
        demo.wait_for_output("Press Ctrl-C to stop.")
        banner = demo.output
        assert f"base URL   {base}/v1" in banner
        assert f"curl {base}/v1/chat/completions" in banner and "from openai import OpenAI" in banner
        demo.wait_until_serving(f"{base}/ready")

        with OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=10) as client:
            assert [m.id for m in client.models.list()] == ["demo-chat", "gpt-4o-mini", "demo-embed", "text-embedding-3-small"]
            reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            assert reply.choices[0].message.content == " the model gateway" and reply.model == "demo-chat"
            chunks = list(client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}],
                                                         max_tokens=2, stream=True, stream_options={"include_usage": True}))
            assert chunks[-1].usage.completion_tokens == 2
            assert len(client.embeddings.create(model="demo-embed", input="hello").data[0].embedding) == 384
        backends = [b["url"] for b in httpx.get(f"{base}/status", timeout=5).json()["backends"]]

        assert demo.interrupt() == 0, demo.output
    assert "Traceback" not in demo.output
    for url in [base, *backends]:
        assert refuses(f"{url}/health"), f"{url} still answers after the demo stopped"


def test_demo_on_a_busy_port_says_so() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "vllm_gateway", "demo", "--port", str(port)], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_simulate_serves_its_models_and_stops_on_ctrl_c() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started(["simulate", "--model", "my-model", "--model", "my-model-alt", "--lora", "my-lora", "--port", str(port)]) as sim:
        sim.wait_until_serving(f"{base}/health")
        ids = [card["id"] for card in httpx.get(f"{base}/v1/models", timeout=5).json()["data"]]
        assert ids == ["my-model", "my-model-alt", "my-lora"]
        with OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=10) as client:
            assert client.completions.create(model="my-lora", prompt="x", max_tokens=1).model == "my-lora"
        assert sim.interrupt() == 0, sim.output
    assert refuses(f"{base}/health")


def test_serve_with_a_config_file(tmp_path: Path) -> None:
    with running(simulator(["served-chat"], CHAT, api_key="k-sim")) as backend:
        config = tmp_path / "gateway.yaml"
        config.write_text(textwrap.dedent(f"""
            host: 0.0.0.0
            port: 1
            health_check_interval: 0.5
            backends:
              - name: chat
                url: {backend.url}
                aliases: [gpt-4o-mini]
                api_key: k-sim
        """), encoding="utf-8")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        # Flags win over the file; the environment fills in the rest.
        with started(["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                     env={"GATEWAY_LOG_LEVEL": "warning"}) as gateway:
            gateway.wait_until_serving(f"{base}/ready")
            with OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=10) as client:
                reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
                assert reply.model == "served-chat" and reply.choices[0].message.content == " the model"
            assert gateway.interrupt() == 0, gateway.output
        assert refuses(f"{base}/health")
        assert backend.app.state.received == 1
