"""deploy/prometheus and deploy/grafana: valid for promtool and Grafana, and in step with the page.

`dashboard_queries()` is what the Prometheus end-to-end test runs against a real server, so every
query a dashboard panel shows is one the tests have seen return data (or at least evaluate).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "vllm-gateway.json"

# The panels the issue asks for, as the dashboard writes them (before Grafana's substitutions).
REQUIRED = {
    "request rate per model":
        'sum by (model) (rate(gateway_requests_total{model=~"$model"}[$__rate_interval]))',
    "p95 latency per model":
        'histogram_quantile(0.95, sum by (model, le) (rate(gateway_request_duration_seconds_bucket{model=~"$model"}[$__rate_interval])))',
    "time to first token per model":
        'histogram_quantile(0.95, sum by (model, le) (rate(gateway_time_to_first_byte_seconds_bucket{model=~"$model"}[$__rate_interval])))',
    "in flight":
        'sum by (model, backend) (gateway_requests_in_flight{model=~"$model",backend=~"$backend"})',
    "KV-cache usage per backend":
        'max by (backend) (vllm:kv_cache_usage_perc{backend=~"$backend"})',
    "prompt tokens per second per model":
        'sum by (backend, model_name) (rate(vllm:prompt_tokens_total{backend=~"$backend"}[$__rate_interval]))',
    "generated tokens per second per model":
        'sum by (backend, model_name) (rate(vllm:generation_tokens_total{backend=~"$backend"}[$__rate_interval]))',
}

# The residency row (app/residency): checked against Prometheus with on-demand backends swapping.
RESIDENCY = {
    "which model is awake over time": 'max by (backend) (gateway_backend_awake{backend=~"$backend"})',
    "swaps per minute":
        'sum by (backend, direction) (rate(gateway_backend_swaps_total{backend=~"$backend"}[$__rate_interval])) * 60',
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> dict[str, str]:
    """Every panel query of the dashboard: `{panel title [refId]: expr}`."""
    queries = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            queries[f"{panel['title']} [{target['refId']}]"] = target["expr"]
    return queries


def for_prometheus(expr: str, rate_interval: str) -> str:
    """What Grafana sends for an expression with every model and backend selected."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model", ".*").replace("$backend", ".*")


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: run `make tools` (installs Debian's prometheus package)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS)


def test_alert_rules_are_valid():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    names = {rule["alert"] for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
             for rule in group["rules"]}
    assert {"VllmBackendDown", "VllmGatewayHighErrorRatio", "VllmKvCacheNearlyFull", "VllmTimeToFirstTokenHigh"} <= names


def test_alert_rules_fire_on_the_series_that_should_trigger_them():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_is_valid_and_targets_the_compose_gateway():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "vllm-gateway" and job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["gateway:8080"]}]
    assert config["rule_files"] == ["alerts.yml"]


def test_dashboard_is_importable_with_a_datasource_input():
    board = dashboard()
    assert board["__inputs"] == [{
        "name": "DS_PROMETHEUS", "label": "Prometheus", "description": board["__inputs"][0]["description"],
        "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus",
    }]
    assert board["uid"] == "vllm-gateway" and board["id"] is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    # Also a variable: a provisioned copy (no import step) resolves ${DS_PROMETHEUS} to the default Prometheus.
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"model", "backend"} <= set(variables)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    # Every ${...} the dashboard uses is something Grafana (or the import) fills in.
    used = set(re.findall(r"\$\{?(\w+)", DASHBOARD.read_text()))
    assert used <= {"DS_PROMETHEUS", "model", "backend", "__rate_interval", "__all"}


def test_dashboard_has_the_panels_the_issue_asks_for_with_the_tested_queries():
    queries = set(dashboard_queries().values())
    missing = {name: expr for name, expr in {**REQUIRED, **RESIDENCY}.items() if expr not in queries}
    assert not missing


def test_dashboard_queries_use_only_metrics_the_gateway_page_has():
    """Catches a renamed metric: each metric a query names is a gateway or vLLM family."""
    gateway = {"gateway_requests_total", "gateway_request_duration_seconds_bucket", "gateway_time_to_first_byte_seconds_bucket",
               "gateway_requests_in_flight", "gateway_upstream_errors_total", "gateway_backend_up",
               "gateway_backend_restarts_total", "gateway_client_disconnects_total", "gateway_backend_scrape_errors_total",
               # app/gpu/telemetry.py, present only with a GPU
               "gateway_gpu_memory_total_bytes", "gateway_gpu_memory_used_bytes", "gateway_gpu_utilization_ratio",
               "gateway_backend_gpu_memory_bytes",
               # app/residency: on-demand backends
               "gateway_backend_awake", "gateway_backend_swaps_total", "gateway_backend_wake_seconds_bucket",
               "gateway_request_wait_seconds_bucket"}
    for title, expr in dashboard_queries().items():
        for metric in re.findall(r"\b((?:gateway_|vllm:)[a-z_:]+)\{", expr):
            assert metric in gateway or metric.startswith("vllm:"), (title, metric)


def test_grafana_provisioning_for_docker_compose():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and source["isDefault"]
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vllm-gateway.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
