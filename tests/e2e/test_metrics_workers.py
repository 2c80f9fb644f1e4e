"""`vllm-gateway serve --workers 2`: one page whichever worker answers, counts summed over the
workers, no counts from an earlier run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import CHAT, EMBEDDING, running, simulator, wait_for

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("vllm-gateway")
CHATS, EMBEDS = 24, 12


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stale_counts(directory: Path) -> None:
    """What an earlier run that was killed leaves behind: 1000 chat requests in a worker file."""
    code = textwrap.dedent("""
        from vllm_gateway.metrics import GatewayMetrics
        GatewayMetrics().requests.labels("sim-chat", "chat", "/v1/chat/completions", "200").inc(1000)
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60, cwd=ROOT)
    assert list(directory.glob("counter_*.db"))


def interrupt(process: subprocess.Popen) -> None:
    """Ctrl-C, as an operator stops it; killed if it has not ended 20 s later."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serve_workers(tmp_path: Path, workers: int, settings: dict, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """`vllm-gateway serve --workers N` with `settings` as its configuration; its output in the log."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"host": "127.0.0.1", "shutdown_grace": 2, "log_level": "info", **settings}))
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(CLI), "serve", "--config", str(config), "--workers", str(workers)],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    return process, log


def page(url: str) -> dict[str, list]:
    # A fresh connection each time, so the kernel may hand it to either worker.
    response = httpx.get(f"{url}/metrics", headers={"connection": "close"}, timeout=10)
    assert response.status_code == 200
    parsed = list(text_string_to_metric_families(response.text))
    assert len({f.name for f in parsed}) == len(parsed)
    return {f.name: f.samples for f in parsed}


def total(samples: list, **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def test_two_workers_sum_their_counts_into_one_page(tmp_path):
    metrics_dir = tmp_path / "prometheus-multiproc"
    metrics_dir.mkdir()
    stale_counts(metrics_dir)
    with running(simulator(["sim-chat"], CHAT)) as chat, running(simulator(["sim-embed"], EMBEDDING)) as embed:
        port = free_port()
        process, log = serve_workers(tmp_path, 2, {
            "port": port, "health_check_interval": 0.5,
            "backends": [{"name": "chat", "url": chat.url}, {"name": "embed", "url": embed.url}],
        }, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
        url = f"http://127.0.0.1:{port}"
        try:
            started = wait_for(lambda: log.read_text().count("Application startup complete") == 2, 30, 0.1)
            assert started, log.read_text()
            # Both workers write into the shared directory, and the stale file is gone.
            pids = {p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("*.db")}
            assert len(pids) == 2, sorted(p.name for p in metrics_dir.iterdir())

            def chat_once(_: int) -> int:
                return httpx.post(f"{url}/v1/chat/completions", headers={"connection": "close"}, timeout=10,
                                  json={"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": 2}).status_code

            def embed_once(_: int) -> int:
                return httpx.post(f"{url}/v1/embeddings", headers={"connection": "close"}, timeout=10,
                                  json={"model": "sim-embed", "input": "hi"}).status_code

            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(chat_once, range(CHATS))) + list(pool.map(embed_once, range(EMBEDS)))
            assert statuses == [200] * (CHATS + EMBEDS)

            assert wait_for(lambda: total(page(url)["gateway_backend_up"]) == 2, 10)
            for _ in range(8):  # whichever worker answers, the same sums
                families = page(url)
                requests = families["gateway_requests"]
                assert total(requests, model="sim-chat", backend="chat", status="200") == CHATS
                assert total(requests, model="sim-embed", backend="embed", status="200") == EMBEDS
                durations = [s for s in families["gateway_request_duration_seconds"] if s.name.endswith("_count")]
                assert total(durations) == CHATS + EMBEDS
                assert total(families["gateway_requests_in_flight"]) == 0
                assert [s.value for s in families["gateway_backend_up"]] == [1, 1]
                # The backends' own families come through too, once each.
                tokens = families["vllm:generation_tokens"]
                assert total(tokens, backend="chat", model_name="sim-chat") == 2 * CHATS
                assert len(tokens) == 2
        finally:
            interrupt(process)
    assert process.returncode == 0, log.read_text()
    assert metrics_dir.is_dir()  # an operator's directory is kept


def _sockets_on(port: int) -> dict[str, set[int]]:
    """Inodes of this port's TCP sockets on loopback by state: LISTEN, and ESTABLISHED with the
    port as the local end (the gateway's side of client connections)."""
    found: dict[str, set[int]] = {"listen": set(), "accepted": set()}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] in ("0A", "01"):
            found["listen" if fields[3] == "0A" else "accepted"].add(int(fields[9]))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def test_each_worker_accepts_on_its_own_socket_so_connections_spread_over_all(tmp_path):
    """With one listening socket shared, whichever worker runs when connections arrive takes
    them all; each worker's own SO_REUSEPORT socket lets the kernel spread them."""
    with running(simulator(["sim-embed"], EMBEDDING)) as embed:
        port = free_port()
        process, log = serve_workers(tmp_path, 3, {"port": port, "backends": [{"name": "embed", "url": embed.url}]})
        clients: list[socket.socket] = []
        try:
            assert wait_for(lambda: log.read_text().count("Application startup complete") == 3, 30, 0.1), log.read_text()
            assert "each accepting on its own socket" in log.read_text()
            body = b'{"model":"sim-embed","input":"hi"}'
            for _ in range(48):  # held open (keep-alive), each having been answered once
                client = socket.create_connection(("127.0.0.1", port), timeout=10)
                client.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                               b"content-length: %d\r\n\r\n%s" % (len(body), body))
                assert client.recv(65536).startswith(b"HTTP/1.1 200 OK")
                clients.append(client)
            workers = [int(p) for p in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
            sockets = _sockets_on(port)
            held = {pid: _socket_inodes(pid) for pid in workers}
            listening = [pid for pid in workers if held[pid] & sockets["listen"]]
            assert len(sockets["listen"]) == 3 and len(listening) == 3, (sockets, held)
            served = sorted(len(held[pid] & sockets["accepted"]) for pid in listening)
            assert sum(served) == 48 and served[0] >= 4, served  # even odds: each of 3 gets ~16
        finally:
            for client in clients:
                client.close()
            interrupt(process)
    assert process.returncode == 0, log.read_text()


def test_several_workers_on_a_port_in_use_fail_at_once_saying_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process, log = serve_workers(tmp_path, 2, {"port": port, "backends": [{"name": "a", "url": "http://127.0.0.1:9"}]})
        assert process.wait(60) == 3
    assert f"cannot serve on 127.0.0.1 port {port}: Address already in use" in log.read_text()
    assert "Traceback" not in log.read_text()
