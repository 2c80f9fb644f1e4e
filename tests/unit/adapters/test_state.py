"""The per-address record and the backend's part: eviction order, what /status shows, and the
error a remembered failure answers with."""

from __future__ import annotations

import orjson

from vllm_gateway.adapters.config import AdapterSpec
from vllm_gateway.adapters.state import AddressAdapters, BackendAdapters, Failure

SPEC = AdapterSpec("sql", "hf:org/sql", "org/sql")


def test_the_victim_is_the_least_recently_used_with_nothing_in_flight() -> None:
    record = AddressAdapters("http://a", pinned=frozenset({"p"}))
    for name in ("x", "y", "z"):
        record.loaded[name] = 0.0
    record.in_flight = {"x": 2}
    assert record.idle_victim() == "y"
    record.in_flight["y"] = 1
    record.in_flight["z"] = 1
    assert record.idle_victim() is None  # pinned ones are never candidates
    assert record.resident() == 4 and record.holds("p") and not record.holds("q")
    assert record.status()["loaded"] == ["p", "x", "y", "z"] and record.status()["in_flight"] == {"x": 2, "y": 1, "z": 1}


def test_a_failure_answers_openai_shaped_with_vllms_reason_and_when_to_retry() -> None:
    failure = Failure("Loading lora sql failed: No adapter found for org/sql", 404, "adapter_not_found", 130.0, SPEC, "chat")
    error = failure.error(now=100.0)
    body = orjson.loads(error.body())["error"]
    assert error.status == 404 and error.headers == {"Retry-After": "30"}
    assert body["type"] == "invalid_request_error" and body["code"] == "adapter_not_found" and body["param"] == "model"
    assert "No adapter found for org/sql" in body["message"] and "adapters.sql ('hf:org/sql')" in body["message"]
    assert Failure("routes missing", 502, "adapter_loading_disabled", 130.0, SPEC, "chat").error(100.0).status == 502


def test_a_failure_is_forgotten_once_its_time_is_up() -> None:
    adapters = BackendAdapters({"sql": SPEC}, limit=2)
    adapters.failures["sql"] = Failure("no", 400, "adapter_load_failed", 130.0, SPEC, "chat")
    assert adapters.failure("sql", 129.0) is not None
    assert adapters.failure("sql", 130.0) is None and adapters.failures == {}
    assert adapters.status([])["configured"] == {"sql": "hf:org/sql"}
