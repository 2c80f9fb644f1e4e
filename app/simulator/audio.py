"""`/v1/audio/transcriptions` and `/v1/audio/translations`: multipart uploads, `model` a form field."""

from __future__ import annotations

import orjson

from . import shapes
from .multipart import form_field
from .parts import Parts
from .wire import Handler, Receive, Scope, Send, header, respond


class Audio:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def routes(self) -> dict[str, Handler]:
        return {"/v1/audio/transcriptions": self.transcribe, "/v1/audio/translations": self.transcribe}

    async def transcribe(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        ctype = header(scope, b"content-type") or b""
        if not ctype.startswith(b"multipart/form-data"):
            await respond(send, 400, shapes.error("expected multipart/form-data", "Bad Request", 400))
            return
        model = form_field(body, ctype, "model")
        self.parts.intake.record(scope, {"model": model, "bytes": len(body)})
        if model is not None and model not in self.parts.config.models:
            await respond(send, 404, shapes.error(f"The model `{model}` does not exist.", "NotFoundError", 404, "model"))
            return
        await respond(send, 200, orjson.dumps({"text": f"transcribed {len(body)} bytes",
                                               "usage": {"type": "duration", "seconds": 1}}))
