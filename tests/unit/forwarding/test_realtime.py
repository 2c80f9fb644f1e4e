"""`forwarding.realtime` without sockets: what is held before session.update, how a session is routed,
the shapes the client sees, and how a failed backend handshake is counted."""

from __future__ import annotations

import json
import socket

import pytest

from vllm_gateway.errors import BadGateway, BadRequest, ModelNotFound, PayloadTooLarge, ServiceUnavailable
from vllm_gateway.forwarding.context import ForwardingContext
from vllm_gateway.forwarding.realtime import (
    MAX_HELD_BYTES,
    MAX_HELD_MESSAGES,
    Opening,
    RealtimeEndpoint,
    close_code,
    error_event,
    handshake_headers,
    passable,
    resolve,
    session_created,
    websocket_url,
)
from vllm_gateway.metrics import GatewayMetrics
from vllm_gateway.routing.registry import Registry
from vllm_gateway.settings import Settings


def text(event: dict) -> dict:
    return {"type": "websocket.receive", "text": json.dumps(event)}


def registry(**options) -> Registry:
    return Registry(Settings(backends=[
        {"name": "a", "url": "http://127.0.0.1:9", "models": ["whisper-a"], "aliases": ["transcribe"],
         "api_key": "backend-secret"},
        {"name": "b", "url": "http://127.0.0.1:10", "models": ["whisper-b"]},
    ], **options))


def test_messages_are_held_in_order_until_the_first_session_update() -> None:
    opening = Opening()
    held = [text({"type": "input_audio_buffer.append", "audio": "AAAA"}), {"type": "websocket.receive", "bytes": b"\x00"},
            {"type": "websocket.receive", "text": "not json"}, text({"type": "session.updated"})]
    assert all(opening.add(m) is None for m in held)
    event = opening.add(text({"type": "session.update", "model": "transcribe"}))
    assert event == {"type": "session.update", "model": "transcribe"}
    assert opening.messages[:-1] == held and len(opening.messages) == 5


def test_holding_is_bounded_by_count() -> None:
    opening = Opening()
    for _ in range(MAX_HELD_MESSAGES):
        opening.add(text({"type": "input_audio_buffer.append", "audio": "AA=="}))
    with pytest.raises(PayloadTooLarge) as refused:
        opening.add(text({"type": "session.update", "model": "transcribe"}))
    assert refused.value.code == "session_update_required"


def test_holding_is_bounded_by_bytes() -> None:
    opening = Opening()
    opening.add({"type": "websocket.receive", "bytes": b"\x00" * (MAX_HELD_BYTES - 10)})
    with pytest.raises(PayloadTooLarge):
        opening.add({"type": "websocket.receive", "text": "x" * 11})


def test_an_alias_is_rewritten_to_the_backends_name_in_the_event() -> None:
    route, model, replacement = resolve(registry(), {"type": "session.update", "model": "transcribe", "x": 1}, None, None)
    assert route.backend.name == "a" and model == "transcribe"
    assert json.loads(replacement) == {"type": "session.update", "model": "whisper-a", "x": 1}


def test_a_backends_own_name_goes_unchanged() -> None:
    route, model, replacement = resolve(registry(), {"type": "session.update", "model": "whisper-b"}, None, None)
    assert (route.backend.name, model, replacement) == ("b", "whisper-b", None)


def test_without_a_model_in_the_event_the_url_then_the_default_model_names_it() -> None:
    reg = registry(default_model="whisper-b")
    route, model, replacement = resolve(reg, {"type": "session.update"}, "transcribe", "whisper-b")
    assert route.backend.name == "a" and json.loads(replacement)["model"] == "whisper-a"
    route, model, replacement = resolve(reg, {"type": "session.update", "model": ""}, None, "whisper-b")
    assert route.backend.name == "b" and json.loads(replacement)["model"] == "whisper-b"


def test_no_model_anywhere_is_a_bad_request_naming_the_models() -> None:
    with pytest.raises(BadRequest) as refused:
        resolve(registry(), {"type": "session.update"}, None, None)
    assert refused.value.code == "missing_model" and "transcribe, whisper-a, whisper-b" in refused.value.message


def test_an_unknown_model_is_model_not_found_naming_the_models() -> None:
    with pytest.raises(ModelNotFound) as refused:
        resolve(registry(), {"type": "session.update", "model": "nope"}, None, None)
    assert "`nope`" in refused.value.message and "whisper-a" in refused.value.message


def test_error_events_have_the_openai_realtime_shape_and_close_codes_follow_the_cause() -> None:
    event = json.loads(error_event(ModelNotFound("no such model", param="model")))
    assert event["type"] == "error" and event["event_id"].startswith("event_")
    assert event["error"] == {"type": "invalid_request_error", "code": "model_not_found", "message": "no such model",
                              "param": "model", "event_id": None}
    assert close_code(ModelNotFound("x")) == 1008
    assert close_code(ServiceUnavailable("x")) == 1013
    assert close_code(BadGateway("x")) == 1011
    greeting = json.loads(session_created())
    assert greeting["type"] == "session.created" and greeting["id"].startswith("sess-")


def test_addresses_and_close_codes_passed_on() -> None:
    assert websocket_url("http://10.0.0.1:8000") == "ws://10.0.0.1:8000/v1/realtime"
    assert websocket_url("https://host/") == "wss://host/v1/realtime"
    assert [passable(c) for c in (None, 1005, 1006, 1015, 999, 5000)] == [1000] * 6
    assert [passable(c) for c in (1000, 1001, 1011, 1012, 4000)] == [1000, 1001, 1011, 1012, 4000]


def test_the_backend_gets_its_own_key_and_the_request_id() -> None:
    upstream = registry().backends["a"].upstreams[0]
    assert handshake_headers(upstream, b"req-1") == {"authorization": "Bearer backend-secret", "x-request-id": "req-1"}
    assert handshake_headers(registry().backends["b"].upstreams[0], None) == {}


@pytest.mark.anyio
async def test_a_refused_connection_is_503_and_feeds_the_circuit_breaker() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    reg = Registry(Settings(backends=[{"name": "gone", "url": f"http://127.0.0.1:{port}", "models": ["m"]}]))
    ctx = ForwardingContext(reg.settings, GatewayMetrics())
    backend = reg.backends["gone"]
    with pytest.raises(ServiceUnavailable) as refused:
        await RealtimeEndpoint(reg, ctx)._connect(backend, backend.upstreams[0], None)
    assert "refused the connection" in refused.value.message
    assert backend.breaker.failures == 1
    assert ctx.metrics.upstream_errors.labels("gone", "connect")._value.get() == 1
