"""The /status document is the documented data model: every field it has is in the README's table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from vllm_gateway.api.status import SCHEMA_VERSION, status_document
from vllm_gateway.gateway import create_app
from vllm_gateway.gpu.fake import FakeGpu, FakeGpus
from vllm_gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
GB = 10**9


def document() -> dict[str, Any]:
    settings = Settings(gpu={"memory": "48GB"}, backends=[
        {"name": "ext", "url": "http://ext:8000", "max_concurrency": 2},
        {"name": "guard", "url": "http://127.0.0.1:8001", "models": ["guard-8b"],
         "launch": {"model": str(ROOT / "tests/fixtures/models/qwen3-8b"), "gpu_memory_utilization": 0.6,
                    "max_model_len": 32768}},
    ])
    app = create_app(settings, transport=httpx.MockTransport(lambda r: httpx.Response(200)),
                     gpus=FakeGpus([FakeGpu(0, total=48 * GB, used=20 * GB, procs=[(4_000_000, GB)])]))
    app.state.gpu_telemetry.snapshot()
    app.state.engine_stats.update('vllm:kv_cache_usage_perc{backend="ext",engine="0"} 0.5\n')
    return status_document(app.state, engine=True)


def _fields(value: Any, prefix: str = "") -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("by_backend", "gpu_memory_bytes"):  # keyed by names and GPU indexes, not fields
                found.add(prefix + key)
                continue
            found.add(prefix + key)
            found |= _fields(inner, prefix + key + ".")
    elif isinstance(value, list):
        for item in value:
            found |= _fields(item, prefix.rstrip(".") + "[].")
    return found


def test_every_field_of_status_is_in_the_readmes_data_model_table() -> None:
    doc = document()
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### The /status data model", 1)[1].split("\n## ", 1)[0]
    documented = {word for quoted in re.findall(r"`([^`]+)`", table) for word in re.findall(r"[a-z0-9_]+", quoted)}
    leaves = {name.rsplit(".", 1)[-1].removesuffix("[]") for name in _fields(doc)}
    assert leaves - documented == set()
    # Today's fields are all still there (extended, not changed).
    guard = next(b for b in doc["backends"] if b["name"] == "guard")
    for key in ("name", "url", "urls", "state", "models", "aliases", "last_error", "launched", "circuit", "pid", "restarts",
                "uptime_s", "last_exit_code", "memory", "gpu_memory_bytes", "traffic", "engine"):
        assert key in guard
    assert {"version", "shutting_down", "backends", "gpus"} <= set(doc)
    ext = next(b for b in doc["backends"] if b["name"] == "ext")
    assert ext["limits"]["max_concurrency"] == 2 and ext["engine"]["kv_cache_usage"] == 0.5
    assert doc["gpus"][0]["foreign"] == [{"pid": 4_000_000, "bytes": GB}]


def test_with_the_page_off_nothing_hooks_the_request_path_and_the_rates_are_null() -> None:
    from fastapi.testclient import TestClient

    settings = Settings(ui={"enabled": False}, backends=[{"name": "ext", "url": "http://ext:8000"}])
    app = create_app(settings, transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert app.state.forwarding.activity is None and app.state.live_feed is None
    traffic = status_document(app.state)["backends"][0]["traffic"]
    assert traffic["in_flight"] == 0 and traffic["requests_per_s"] is None and traffic["p99_s"] is None
    with TestClient(app) as client:
        assert client.get("/ui").status_code == 404
        assert "engine" not in client.get("/status").json()["backends"][0]
        assert client.get("/status?engine=true").json()["backends"][0]["engine"] is None
