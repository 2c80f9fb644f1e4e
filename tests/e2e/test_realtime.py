"""`/v1/realtime` through the gateway: a WebSocket session routed by the model in its
session.update, relayed both ways to the right backend, refused with an error event when it
cannot be, and never outliving either side or the gateway.

Clients: the `websockets` sync client (the protocol's events as vLLM names them), and once the
official `openai` SDK's realtime client, which names the model in the URL.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.servers import Running, gateway, gateway_settings, running, sim_stats, simulator, wait_for
from vllm_gateway.gateway import create_app

# The openai SDK's sync realtime client drives `websockets` in a way websockets 17 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

KEY = "sk-gateway-realtime"
BACKEND_KEY = "backend-secret"
AUDIO = b"\x01\x02" * 400  # 800 bytes of "PCM16"


@pytest.fixture
def sims() -> Iterator[tuple[Running, Running]]:
    with running(simulator(["whisper-a"])) as a, running(simulator(["whisper-b"], api_key=BACKEND_KEY)) as b:
        yield a, b


@pytest.fixture
def gw(sims: tuple[Running, Running]) -> Iterator[Running]:
    a, b = sims
    with gateway({"name": "a", "url": a.url, "aliases": ["transcribe-a"]},
                 {"name": "b", "url": b.url, "aliases": ["transcribe-b"], "api_key": BACKEND_KEY}) as g:
        yield g


@contextlib.contextmanager
def open_session(gw: Running, **options: Any) -> Iterator[ClientConnection]:
    with connect(gw.url.replace("http://", "ws://") + "/v1/realtime", open_timeout=5, close_timeout=2,
                 **options) as ws:
        greeting = recv(ws)
        assert greeting["type"] == "session.created" and greeting["id"].startswith("sess-")
        yield ws


def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=5))


def send(ws: ClientConnection, **event: Any) -> None:
    ws.send(json.dumps(event))


def append(ws: ClientConnection, audio: bytes = AUDIO) -> None:
    send(ws, type="input_audio_buffer.append", audio=base64.b64encode(audio).decode())


def closed(ws: ClientConnection) -> ConnectionClosed:
    """The close the client was sent (after any events still queued before it)."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=5)
    return info.value


def sessions(sim: Running) -> list[dict[str, Any]]:
    return sim_stats(sim.url)["realtime"]


def metric(gw: Running, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics page (0 when absent)."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in httpx.get(gw.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_session_is_relayed_by_alias_to_its_backend_with_the_backends_key(gw, sims) -> None:
    a, b = sims
    with open_session(gw, additional_headers={"Authorization": "Bearer client-token"}) as ws:
        append(ws)  # before session.update: held by the gateway, replayed in order
        send(ws, type="session.update", model="transcribe-b")
        send(ws, type="input_audio_buffer.commit")
        delta = recv(ws)  # not a second session.created: the backend's greeting is not relayed
        assert delta == {"type": "transcription.delta", "delta": f" [{len(AUDIO)} bytes]"}
        append(ws, b"\x00" * 320)
        assert recv(ws) == {"type": "transcription.delta", "delta": " [320 bytes]"}
        send(ws, type="input_audio_buffer.commit", final=True)
        done = recv(ws)
        assert done["type"] == "transcription.done" and done["text"] == f" [{len(AUDIO)} bytes] [320 bytes]"
        assert metric(gw, "gateway_requests_in_flight", model="transcribe-b", backend="b") == 1
    assert wait_for(lambda: not sessions(b)[0]["open"])
    [session] = sessions(b)
    assert session["model"] == "whisper-b"  # the alias, rewritten to the backend's own name
    assert session["events"] == ["input_audio_buffer.append", "session.update", "input_audio_buffer.commit",
                                 "input_audio_buffer.append", "input_audio_buffer.commit"]
    assert session["audio_bytes"] == len(AUDIO) + 320 and session["transcriptions"] == 1
    assert session["headers"]["authorization"] == f"Bearer {BACKEND_KEY}"  # never the client's
    assert sessions(a) == []
    assert metric(gw, "gateway_requests_total", endpoint="/v1/realtime", model="transcribe-b", status="101") == 1
    assert wait_for(lambda: metric(gw, "gateway_requests_in_flight", model="transcribe-b", backend="b") == 0)


def test_an_unknown_model_gets_an_error_event_naming_the_models_then_a_policy_close(gw, sims) -> None:
    with open_session(gw) as ws:
        append(ws)
        send(ws, type="session.update", model="no-such-model")
        event = recv(ws)
        assert event["type"] == "error"
        error = event["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert error["type"] == "invalid_request_error"
        assert "no-such-model" in error["message"]
        for name in ("transcribe-a", "transcribe-b", "whisper-a", "whisper-b"):
            assert name in error["message"]
        assert closed(ws).rcvd.code == 1008
    assert all(sessions(sim) == [] for sim in sims)  # no backend was bothered
    assert metric(gw, "gateway_requests_total", endpoint="/v1/realtime", model="unknown", status="404") == 1


def test_a_client_that_never_names_a_model_is_held_only_so_long(gw) -> None:
    with open_session(gw) as ws:
        for _ in range(64):
            append(ws, b"\x00\x00")
        append(ws, b"\x00\x00")  # the 65th message before any session.update
        event = recv(ws)
        assert event["error"]["code"] == "session_update_required"
        assert closed(ws).rcvd.code == 1008


def test_a_backend_that_is_down_gets_an_error_event_and_a_try_again_close() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with gateway({"name": "gone", "url": f"http://127.0.0.1:{port}", "models": ["whisper-gone"]}) as gw:
        with open_session(gw) as ws:
            send(ws, type="session.update", model="whisper-gone")
            event = recv(ws)
            assert event["type"] == "error" and event["error"]["code"] == "backend_unavailable"
            assert "'gone'" in event["error"]["message"]
            assert closed(ws).rcvd.code == 1013
        assert metric(gw, "gateway_requests_total", endpoint="/v1/realtime", backend="gone", status="503") == 1


def test_the_client_closing_closes_the_backend_connection_with_its_code(gw, sims) -> None:
    _, b = sims
    with open_session(gw) as ws:
        send(ws, type="session.update", model="whisper-b")
        append(ws)
        assert wait_for(lambda: sessions(b) and sessions(b)[0]["audio_bytes"] == len(AUDIO))
        assert sessions(b)[0]["open"]
        ws.close(code=4000, reason="done talking")
    assert wait_for(lambda: not sessions(b)[0]["open"])
    assert sessions(b)[0]["closed_by"] == "client" and sessions(b)[0]["close_code"] == 4000
    assert wait_for(lambda: metric(gw, "gateway_requests_in_flight", model="whisper-b", backend="b") == 0)


def test_the_backend_closing_reaches_the_client_with_its_code(gw, sims) -> None:
    a, _ = sims
    with open_session(gw) as ws:
        send(ws, type="session.update", model="transcribe-a")
        send(ws, type="_sim.close", code=4001, reason="engine stopped")
        close = closed(ws).rcvd
        assert (close.code, close.reason) == (4001, "engine stopped")
    assert sessions(a)[0]["closed_by"] == "server"


async def echo(scope: dict, receive: Any, send: Any) -> None:
    """A WebSocket backend that sends back every frame, text or binary, as it came."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "http":  # /health and /v1/models of a backend serving "echo"
        body = b'{"object":"list","data":[{"id":"echo","object":"model"}]}' if scope["path"] == "/v1/models" else b""
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]} if message.get("text") is not None
                   else {"type": "websocket.send", "bytes": message["bytes"]})


def test_binary_and_text_frames_are_relayed_both_ways_unchanged() -> None:
    with running(echo) as backend, gateway({"name": "echo", "url": backend.url, "models": ["echo"]}) as gw:
        with open_session(gw) as ws:
            ws.send(b"\x00\xffbefore")  # held, then replayed ahead of the session.update
            send(ws, type="session.update", model="echo")
            assert ws.recv(timeout=5) == b"\x00\xffbefore"
            assert recv(ws) == {"type": "session.update", "model": "echo"}
            payload = bytes(range(256)) * 64
            ws.send(payload)
            assert ws.recv(timeout=5) == payload
            ws.send("plain text, not JSON")
            assert ws.recv(timeout=5) == "plain text, not JSON"


def test_default_model_routes_a_session_update_without_one(sims) -> None:
    a, _ = sims
    with gateway({"name": "a", "url": a.url, "aliases": ["transcribe-a"]}, default_model="transcribe-a") as gw:
        with open_session(gw) as ws:
            send(ws, type="session.update")
            append(ws)
            send(ws, type="input_audio_buffer.commit")
            assert recv(ws)["type"] == "transcription.delta"  # the backend saw the model: it transcribes
    assert wait_for(lambda: not sessions(a)[0]["open"])
    assert sessions(a)[0]["model"] == "whisper-a"


def test_the_openai_sdk_realtime_client_is_routed_by_the_model_in_its_url(gw, sims) -> None:
    a, _ = sims
    client = OpenAI(base_url=gw.url + "/v1", api_key="client-token", max_retries=0)
    with client.realtime.connect(model="transcribe-a") as connection:
        assert connection.recv().type == "session.created"
        connection.send_raw(json.dumps({"type": "session.update"}))  # no model in the event: the URL's
        connection.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(AUDIO).decode()}))
        connection.send_raw(json.dumps({"type": "input_audio_buffer.commit"}))
        assert json.loads(connection.recv_bytes())["type"] == "transcription.delta"
    assert wait_for(lambda: not sessions(a)[0]["open"])
    assert sessions(a)[0]["model"] == "whisper-a"


def test_api_keys_guard_the_realtime_handshake(sims) -> None:
    a, _ = sims
    with gateway({"name": "a", "url": a.url}, api_keys=[KEY]) as gw:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(InvalidStatus) as refused, open_session(gw, additional_headers=headers):
                pass
            response = refused.value.response
            assert response.status_code == 401
            assert json.loads(response.body)["error"]["code"] == "invalid_api_key"
        assert sessions(a) == []
        with open_session(gw, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            send(ws, type="session.update", model="whisper-a")
            append(ws)
            send(ws, type="input_audio_buffer.commit")
            assert recv(ws)["type"] == "transcription.delta"
        assert wait_for(lambda: sessions(a) and not sessions(a)[0]["open"])
        assert "authorization" not in sessions(a)[0]["headers"]  # the gateway's key stays at the gateway


def test_gateway_shutdown_ends_an_open_session_on_both_sides(sims) -> None:
    """With no graceful limit the server waits for every connection: a session that did not end
    on its own would keep the server thread running, and `running` would fail closing its loop."""
    a, _ = sims
    app = create_app(gateway_settings({"name": "a", "url": a.url, "aliases": ["transcribe-a"]}))
    with contextlib.ExitStack() as stack:
        with running(app, graceful=None) as gw:
            ws = stack.enter_context(open_session(gw))
            send(ws, type="session.update", model="transcribe-a")
            append(ws)
            assert wait_for(lambda: sessions(a) and sessions(a)[0]["audio_bytes"] == len(AUDIO))
        assert closed(ws).rcvd.code == 1012  # uvicorn's "service restart"
    assert wait_for(lambda: not sessions(a)[0]["open"])
    assert sessions(a)[0]["close_code"] == 1012


def test_a_draining_gateway_refuses_new_sessions(gw, sims) -> None:
    gw.app.state.begin_shutdown()
    with open_session(gw) as ws:  # refused before it names a model: nothing to send
        assert recv(ws)["error"]["code"] == "shutting_down"
        assert closed(ws).rcvd.code == 1013
    assert all(sessions(sim) == [] for sim in sims)


def test_the_simulator_answers_like_vllm_before_a_valid_session_update(sims) -> None:
    """Straight to a simulator: vLLM's error events (`error` a string, `code` beside it)."""
    a, b = sims
    with open_session(a) as ws:
        send(ws, type="input_audio_buffer.commit")
        assert recv(ws) == {"type": "error", "code": "model_not_validated", "error": (
            "Model not validated. Make sure to validate the model by sending a session.update event.")}
        send(ws, type="session.update", model="whisper-b")
        assert recv(ws) == {"type": "error", "error": "The model `whisper-b` does not exist.", "code": "model_not_found"}
        send(ws, type="response.create")
        assert recv(ws)["code"] == "unknown_event"
    with pytest.raises(InvalidStatus) as refused, open_session(b):
        pass  # its own API key guards it as vLLM's does
    assert refused.value.response.status_code == 401
