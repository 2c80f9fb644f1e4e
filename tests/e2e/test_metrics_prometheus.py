"""A real Prometheus server scrapes a real gateway in front of two simulated vLLM servers; every
query of the Grafana dashboard evaluates, and those the issue names return data.

Prometheus comes from Debian's `prometheus` package (scripts/test-tools.sh installs it); it
listens on loopback with a temporary configuration (derived from deploy/prometheus/prometheus.yml,
with deploy/prometheus/alerts.yml loaded) and a temporary storage directory, scraping every second.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.servers import CHAT, EMBEDDING, gateway, gateway_settings, running, simulator, wait_for
from tests.unit.metrics.test_deploy_rules import PROMETHEUS, REQUIRED, RESIDENCY, dashboard_queries, for_prometheus

POSITIVE = {"request rate per model", "prompt tokens per second per model", "generated tokens per second per model"}
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval is at a 1 s scrape interval and a short range


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prometheus_config(target: str, directory: Path) -> Path:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [target]}])
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus_server(tmp_path):
    """Start Prometheus; yields `(start(target), base_url)` so it can scrape a gateway started first."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run `make tools` (installs Debian's prometheus package)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes: list[subprocess.Popen] = []
    log = tmp_path / "prometheus.log"

    def start(target: str) -> str:
        config = prometheus_config(target, tmp_path)
        with log.open("wb") as out:
            processes.append(subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", "--storage.tsdb.retention.time=1h"],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            ))

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(ready, 20, 0.1), log.read_text()
        return url

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def query(url: str, expr: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def finite(result: list[dict]) -> list[float]:
    values = [float(series["value"][1]) for series in result]
    return [v for v in values if not math.isnan(v) and not math.isinf(v)]


class Traffic:
    """Requests through both backends, in a thread, until stopped."""

    def __init__(self, url: str) -> None:
        self.client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        messages = [{"role": "user", "content": "hello there"}]
        while not self.stop.is_set():
            self.client.chat.completions.create(model="sim-chat", messages=messages, max_tokens=4)
            for _ in self.client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=4, stream=True):
                pass
            self.client.embeddings.create(model="sim-embed", input=["a", "b"])
            self.sent += 3
            self.stop.wait(0.05)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(15)


def test_prometheus_scrapes_the_gateway_and_every_dashboard_query_evaluates(prometheus_server):
    queries = {title: for_prometheus(expr, RATE_INTERVAL) for title, expr in dashboard_queries().items()}
    required = {name: for_prometheus(expr, RATE_INTERVAL) for name, expr in REQUIRED.items()}
    assert set(required.values()) <= set(queries.values())
    with running(simulator(["sim-chat"], CHAT, token_delay=0.002)) as chat, \
            running(simulator(["sim-embed"], EMBEDDING)) as embed, \
            gateway({"name": "chat", "url": chat.url, "aliases": ["gpt-4o-mini"]}, {"name": "embed", "url": embed.url}) as gw:
        url = prometheus_server(gw.url.removeprefix("http://"))
        with Traffic(gw.url) as traffic:
            missing: dict[str, list] = {}

            def all_have_data() -> bool:
                missing.clear()
                for name, expr in required.items():
                    values = finite(query(url, expr))
                    # Rates of what is being driven must be above zero, not only present.
                    if not values or (name in POSITIVE and max(values) <= 0):
                        missing[name] = values
                return not missing

            assert wait_for(all_have_data, 25, 0.5), f"no data yet for {sorted(missing)}"
            assert traffic.sent > 0
        # Rates of what was driven are positive, per model and per backend.
        rates = {s["metric"]["model"]: float(s["value"][1]) for s in query(url, required["request rate per model"])}
        assert rates.get("sim-chat", 0) > 0 and rates.get("gpt-4o-mini", 0) > 0 and rates.get("sim-embed", 0) > 0
        generated = query(url, required["generated tokens per second per model"])
        assert any(s["metric"] == {"backend": "chat", "model_name": "sim-chat"} and float(s["value"][1]) > 0 for s in generated)
        kv = {s["metric"]["backend"] for s in query(url, required["KV-cache usage per backend"])}
        assert kv == {"chat", "embed"}
        # The other panels' queries are valid PromQL on this data (some are empty without errors or restarts).
        for _title, expr in queries.items():
            query(url, expr)
        # The alerting rules load and evaluate against the gateway's series.
        time.sleep(1.5)  # at least one evaluation at the 1 s interval
        groups = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) >= 4
        assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
        targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"], targets


def test_the_dashboard_shows_which_on_demand_model_is_awake_over_time(prometheus_server):
    """Two launched simulators that cannot be awake together, asked for in turn while Prometheus scrapes."""
    from tests.e2e.test_residency import ask, client, on_demand, settled
    from vllm_gateway.gateway import create_app

    settings = gateway_settings(on_demand("x", 0.6), on_demand("y", 0.6))
    awake, swaps = (for_prometheus(RESIDENCY[name], RATE_INTERVAL) for name in ("which model is awake over time",
                                                                                "swaps per minute"))
    with running(create_app(settings)) as gw:
        assert wait_for(lambda: settled(gw.url), 30)
        url = prometheus_server(gw.url.removeprefix("http://"))
        sdk = client(gw.url)
        seen: dict[str, set[float]] = {"x": set(), "y": set()}

        def swapped_both_ways() -> bool:
            for model in ("model-x", "model-y"):
                ask(sdk, model, stream=False)
            for series in query(url, awake):
                seen[series["metric"]["backend"]].add(float(series["value"][1]))
            rates = {(s["metric"]["backend"], s["metric"]["direction"]): float(s["value"][1]) for s in query(url, swaps)}
            return seen["x"] == seen["y"] == {0.0, 1.0} and all(rates.get((b, "wake"), 0) > 0 for b in ("x", "y"))

        assert wait_for(swapped_both_ways, 25, 0.3), seen
        # At no sampled instant were both awake: the step lines never overlap at 1.
        both = query(url, 'max_over_time((sum(gateway_backend_awake) > 1)[30s:1s])')
        assert both == [], both
