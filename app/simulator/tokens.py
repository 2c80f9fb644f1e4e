"""`/tokenize` and `/detokenize`: a stable stand-in tokenizer, no engine involved (they answer
while the engine sleeps, as vLLM's do: the tokenizer lives in the API server)."""

from __future__ import annotations

import orjson

from . import shapes
from .parts import Parts
from .wire import Handler, Receive, Scope, Send, respond


class Tokens:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def routes(self) -> dict[str, Handler]:
        return {"/tokenize": self.tokenize, "/detokenize": self.detokenize}

    async def tokenize(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        data, _ = await self.parts.intake.parse(scope, send, body)
        if data is None:
            return
        text = data.get("prompt") or orjson.dumps(data.get("messages")).decode()
        tokens = list(range(100, 100 + shapes.tokens_for(text)))
        await respond(send, 200, orjson.dumps({"count": len(tokens), "max_model_len": self.parts.config.max_model_len,
                                               "tokens": tokens, "token_strs": None}))

    async def detokenize(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        data, _ = await self.parts.intake.parse(scope, send, body)
        if data is None:
            return
        tokens = data.get("tokens") or []
        await respond(send, 200, orjson.dumps({"prompt": "".join(shapes.word(t) for t in tokens if isinstance(t, int))}))
