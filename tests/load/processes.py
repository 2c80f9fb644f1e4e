"""Start the gateway and simulator backends as OS processes, and read what /proc and /metrics say.

Each process is `python -m vllm_gateway ...` from this checkout, with GATEWAY_* variables removed from its
environment (they would override the YAML the test writes), its output in a log file whose tail
is shown when it fails to start, and SIGTERM (then SIGKILL) when its context ends.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import wait_for

REPO = Path(__file__).resolve().parents[2]


# -- processes -----------------------------------------------------------------------------------------

@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _clean_env() -> dict[str, str]:
    """The children's environment without GATEWAY_* settings that would override the YAML (but
    with GATEWAY_FAST_PATH, with which `make test` runs the end-to-end set on stock uvicorn)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") or k == "GATEWAY_FAST_PATH"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def _process(name: str, args: list[str], port: int, log: Path, ready_path: str = "/health") -> Iterator[Service]:
    handle = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "vllm_gateway", *args], cwd=REPO, env=_clean_env(), stdout=handle,
                            stderr=subprocess.STDOUT, preexec_fn=raise_fd_limit)
    service = Service(name, proc, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{service.log_tail()}")
            try:
                if httpx.get(f"{service.url}{ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become ready in 30 s:\n{service.log_tail()}")
            time.sleep(0.1)
        yield service
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        handle.close()


@contextlib.contextmanager
def simulator_process(tmp: Path, model: str, token_delay: float = 0.005, kind: str = "chat") -> Iterator[Service]:
    port = free_port()
    args = ["simulate", "--model", model, "--kind", kind, "--port", str(port), "--token-delay", str(token_delay)]
    with _process(f"simulator {model}", args, port, tmp / f"sim-{model}.log") as service:
        yield service


@contextlib.contextmanager
def gateway_process(tmp: Path, backends: list[dict], **settings) -> Iterator[Service]:
    port = free_port()
    config = {"host": "127.0.0.1", "port": port, "log_level": "warning", "shutdown_grace": 2,
              "backends": backends, **settings}
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    with _process("gateway", ["serve", "--config", str(path)], port, tmp / "gateway.log", "/ready") as service:
        yield service


# -- what the kernel and the gateway say --------------------------------------------------------------

def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS line")


def established_tcp(pid: int, local_port: int | None = None) -> int:
    """TCP connections in state ESTABLISHED whose socket this process holds open (only those on
    `local_port` when given: a server's connections from its clients)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:
                if local_port is None or int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    count += 1
    return count


def gauge_total(url: str, family: str) -> float:
    """The sum of every sample of one metric family on the gateway's /metrics page."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for metric in text_string_to_metric_families(text):
        if metric.name == family:
            total += sum(sample.value for sample in metric.samples if sample.name == family)
    return total


def counter_total(url: str, family: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for metric in text_string_to_metric_families(text):
        if metric.name == family:
            total += sum(sample.value for sample in metric.samples if sample.name == f"{family}_total")
    return total


def sim_stats(service: Service) -> dict[str, int]:
    """A simulator's counters (received, running, completed, disconnects, held, ...), without its records."""
    stats = httpx.get(f"{service.url}/_sim/stats", timeout=10).json()
    return {key: value for key, value in stats.items() if isinstance(value, int)}


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.1) -> bool:
    """`tests.servers.wait_for` with the longer defaults that whole processes need."""
    return wait_for(predicate, timeout, interval)
