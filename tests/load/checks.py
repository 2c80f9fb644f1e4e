"""Building chat requests and judging streamed answers, shared by the load and disconnect tests."""

from __future__ import annotations

import orjson

from tests.load import rawhttp
from vllm_gateway.simulator.shapes import word


def chat(model: str, max_tokens: int, stream: bool, request_id: str | None = None, keep_alive: bool = True,
         fault: str | None = None) -> bytes:
    """A chat completion request; `fault` becomes the simulator's `x-sim-fault` header."""
    payload = {"model": model, "messages": [{"role": "user", "content": "load"}], "max_tokens": max_tokens}
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    headers = {"x-request-id": request_id} if request_id else {}
    if fault:
        headers["x-sim-fault"] = fault
    return rawhttp.post_json("/v1/chat/completions", payload, headers, keep_alive=keep_alive)


def check_stream(reply: rawhttp.Reply, max_tokens: int, sent_id: str | None) -> str:
    """The problems with one streamed reply, or "" when it is exactly what was asked for."""
    if reply.status != 200:
        return f"status {reply.status}: {reply.body[:200]!r}"
    if not (reply.header(b"content-type") or b"").startswith(b"text/event-stream"):
        return f"content-type {reply.header(b'content-type')!r}"
    events = rawhttp.sse_events(reply.body)
    if not events or events[-1] != b"[DONE]" or events.count(b"[DONE]") != 1:
        return f"stream does not end with exactly one [DONE]: last events {events[-2:]!r}"
    chunks = [orjson.loads(e) for e in events[:-1]]
    if any("error" in c for c in chunks):
        return f"error event: {[c for c in chunks if 'error' in c][0]}"
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    content = [piece for piece in content if piece]
    if len(content) != max_tokens:
        return f"{len(content)} content chunks, expected {max_tokens}"
    if "".join(content) != "".join(word(i) for i in range(max_tokens)):
        return "content differs from what the backend generated"
    usage = [c for c in chunks if c.get("usage") and not c.get("choices")]
    if len(usage) != 1 or usage[0]["usage"]["completion_tokens"] != max_tokens:
        return f"usage chunks {usage!r}"
    echoed = (reply.header(b"x-request-id") or b"").decode()
    if sent_id is not None and echoed != sent_id:
        return f"x-request-id {echoed!r}, sent {sent_id!r}"
    ids = {c["id"] for c in chunks}
    if ids != {f"chatcmpl-{echoed}"}:
        return f"chunk ids {sorted(ids)[:3]} do not all belong to request {echoed!r}"
    return ""
