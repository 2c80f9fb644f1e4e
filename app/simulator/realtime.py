"""`/v1/realtime` as vLLM's `RealtimeConnection` serves it: `session.created` on connect; a
`session.update` must name a served model before `input_audio_buffer.commit`, else an error
event (`{"type": "error", "error": "<message>", "code": ...}`, vLLM's shape); a commit starts
a transcription that answers a `transcription.delta` per audio chunk appended, and a commit
with `"final": true` ends it with `transcription.done`. vLLM sends no `session.updated`.
Each session is recorded in `state.realtime` (handshake headers, event types, model, audio
and binary bytes, who closed it and with what code). Test hook, like `x-sim-fault`: the event
`{"type": "_sim.close", "code": N, "reason": "..."}` makes the server close with that code.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import orjson

from .config import CHAT
from .parts import Parts
from .wire import Receive, Scope, Send, header


class Realtime:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        self.parts.state.saw(scope["path"])
        if scope["path"] != "/v1/realtime" or self.parts.config.kind != CHAT:
            await send({"type": "websocket.close", "code": 1000})  # no such route: a 403 handshake
            return
        if self.parts.config.api_key and header(scope, b"authorization") != f"Bearer {self.parts.config.api_key}".encode():
            await send({"type": "websocket.http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "websocket.http.response.body", "body": b'{"error":"Unauthorized"}'})
            return
        session: dict[str, Any] = {
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "events": [], "model": None, "audio_bytes": 0, "binary_bytes": 0, "transcriptions": 0,
            "open": True, "closed_by": None, "close_code": None,
        }
        self.parts.state.realtime.append(session)
        await send({"type": "websocket.accept"})

        async def event(payload: dict[str, Any]) -> None:
            await send({"type": "websocket.send", "text": orjson.dumps(payload).decode()})

        async def error(message: str, code: str) -> None:
            await event({"type": "error", "error": message, "code": code})

        await event({"type": "session.created", "id": f"sess-{uuid.uuid4().hex}", "created": int(time.time())})
        generating, heard, deltas = False, 0, []
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    session["closed_by"], session["close_code"] = "client", message.get("code")
                    return
                if message.get("text") is None:
                    session["binary_bytes"] += len(message.get("bytes") or b"")
                    await error("binary frames are not supported: send JSON text events", "invalid_event")
                    continue
                try:
                    data = orjson.loads(message["text"])
                    kind = data.get("type")
                except (orjson.JSONDecodeError, AttributeError):
                    await error("Invalid JSON", "invalid_json")
                    continue
                if len(session["events"]) < 1000:
                    session["events"].append(kind)
                if kind == "session.update":
                    model = data.get("model")
                    if model is None:
                        await error("Missing required field: model", "invalid_event")
                    elif model not in self.parts.config.models:
                        await error(f"The model `{model}` does not exist.", "model_not_found")
                    else:
                        session["model"] = model
                elif kind == "input_audio_buffer.append":
                    try:
                        audio = base64.b64decode(data.get("audio") or "", validate=True)
                    except (ValueError, TypeError):
                        audio = b""
                    if not audio:
                        await error("Invalid audio data", "invalid_audio")
                        continue
                    session["audio_bytes"] += len(audio)
                    heard += len(audio)
                    if generating:
                        deltas.append(f" [{len(audio)} bytes]")
                        await event({"type": "transcription.delta", "delta": deltas[-1]})
                elif kind == "input_audio_buffer.commit":
                    if session["model"] is None:
                        await error("Model not validated. Make sure to validate the model by sending a "
                                    "session.update event.", "model_not_validated")
                    elif data.get("final"):
                        if generating:
                            text = "".join(deltas)
                            usage = {"prompt_tokens": heard // 320, "completion_tokens": len(deltas),
                                     "total_tokens": heard // 320 + len(deltas)}
                            await event({"type": "transcription.done", "text": text, "usage": usage})
                            session["transcriptions"] += 1
                        generating, heard, deltas = False, 0, []
                    elif not generating:
                        generating = True
                        if heard:
                            deltas.append(f" [{heard} bytes]")
                            await event({"type": "transcription.delta", "delta": deltas[-1]})
                elif kind == "_sim.close":
                    session["closed_by"], session["close_code"] = "server", data.get("code", 1000)
                    await send({"type": "websocket.close", "code": session["close_code"],
                                "reason": str(data.get("reason") or "")})
                    return
                else:
                    await error(f"Unknown event type: {kind}", "unknown_event")
        finally:
            session["open"] = False
