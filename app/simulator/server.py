"""A vLLM-compatible server without a GPU: the demo's backends and the tests' backends.

It answers the same routes with the same shapes as `vllm serve`, streams paced SSE, exposes
`vllm:*` metrics, aborts work when its client disconnects (as vLLM does), and records what it
received so tests can assert on it (`GET /_sim/stats`). A request header `x-sim-fault` injects
failures: hang_head, hang_stream, close_mid_stream, garbage_json, status_503, status_500, slow; and
`hold` parks a generation (after a stream's response head) until `POST /_sim/release`, so a load
test can prove that N requests really were in flight at once. `POST /_sim/health` with
`{"status": 503}` makes `/health` (and `/ping`) answer that status from then on while everything
else keeps working: vLLM's API server outliving a dead engine; `{"status": 200}` heals it.
Chat simulators also serve vLLM's realtime transcription WebSocket, `/v1/realtime` (`_realtime`).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from . import shapes

CHAT, EMBEDDING = "chat", "embedding"


@dataclass
class SimulatorConfig:
    models: list[str]
    kind: str = CHAT
    token_delay: float = 0.0
    max_model_len: int = 512
    default_max_tokens: int = 16
    embedding_dim: int = 32
    api_key: str | None = None
    root: str | None = None
    lora_adapters: list[str] = field(default_factory=list)


class SimulatorState:
    """What the simulator saw: tests read it in-process or through `GET /_sim/stats`."""

    def __init__(self) -> None:
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.received = 0
        self.running = 0
        self.completed = 0
        self.disconnects = 0
        self.peak_running = 0
        self.held = 0
        self.health_status = 200  # what GET /health answers; set by POST /_sim/health
        self.paths: collections.Counter[str] = collections.Counter()  # every path asked for, 404s included
        self.release = asyncio.Event()  # the generations parked by `x-sim-fault: hold` wait on it
        self.realtime: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)  # `/v1/realtime` sessions

    def saw(self, path: str) -> None:
        if path in self.paths or len(self.paths) < 1000:  # bounded: a fuzzer must not grow it forever
            self.paths[path] += 1

    def start(self) -> None:
        self.running += 1
        if self.running > self.peak_running:
            self.peak_running = self.running

    async def hold(self, limit: float = 120.0) -> None:
        """Park until `POST /_sim/release` (or `limit` seconds, so a lost release cannot hang a test)."""
        release = self.release
        self.held += 1
        try:
            async with asyncio.timeout(limit):
                await release.wait()
        except TimeoutError:
            pass
        finally:
            self.held -= 1

    def release_held(self) -> None:
        self.release.set()
        self.release = asyncio.Event()

    def stats(self) -> dict[str, Any]:
        return {"received": self.received, "running": self.running, "completed": self.completed,
                "disconnects": self.disconnects, "peak_running": self.peak_running, "held": self.held,
                "paths": dict(self.paths), "requests": list(self.requests), "realtime": list(self.realtime)}


class _Metrics:
    def __init__(self, model: str) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        labels = ["model_name", "engine"]
        self.running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels, registry=r)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, registry=r)
        self.prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r)
        self.generation = Counter("vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=r)
        self.success = Counter("vllm:request_success", "Count of successfully processed requests.",
                               labels + ["finished_reason"], registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", labels,
                              buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0),
                              registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", labels,
                             buckets=(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0), registry=r)
        self.iteration = Histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", labels,
                                   buckets=(1, 8, 16, 32, 64, 128, 256, 512), registry=r)
        cache = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", ["block_size", "engine"], registry=r)
        cache.labels("16", "0").set(1)
        self.http = Counter("http_requests", "Total number of requests by method, status and handler.",
                            ["handler", "method", "status"], registry=r)
        key = (model, "0")
        self.running, self.waiting, self.kv = self.running.labels(*key), self.waiting.labels(*key), self.kv.labels(*key)
        self.prompt, self.generation = self.prompt.labels(*key), self.generation.labels(*key)
        for reason in ("stop", "length", "abort", "error", "repetition"):
            self.success.labels(model, "0", reason)
        self.key = key
        self.ttft, self.e2e, self.iteration = self.ttft.labels(*key), self.e2e.labels(*key), self.iteration.labels(*key)


class Simulator:
    """The ASGI application."""

    def __init__(self, config: SimulatorConfig) -> None:
        if not config.models:
            raise ValueError("a simulator serves at least one model name")
        self.config = config
        self.state = SimulatorState()
        self.metrics = _Metrics(config.models[0])
        self.stored_responses: dict[str, dict] = {}  # the Responses API store: id -> the response
        common = {"/health": self._health, "/ping": self._health, "/v1/models": self._models, "/version": self._version,
                  "/load": self._load, "/metrics": self._metrics, "/_sim/stats": self._stats,
                  "/_sim/release": self._release, "/_sim/health": self._set_health,
                  "/tokenize": self._tokenize, "/detokenize": self._detokenize}
        if config.kind == CHAT:
            common.update({"/v1/chat/completions": self._chat, "/v1/completions": self._completions,
                           "/v1/responses": self._responses, "/v1/audio/transcriptions": self._transcription,
                           "/v1/audio/translations": self._transcription})
        else:
            common.update({"/v1/embeddings": self._embeddings, "/pooling": self._embeddings,
                           "/classify": self._classify, "/score": self._score, "/v1/score": self._score,
                           "/rerank": self._rerank, "/v1/rerank": self._rerank})
        self.routes = common

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] == "websocket":
            await self._realtime(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        self.state.saw(scope["path"])
        handler = self.routes.get(scope["path"])
        if handler is None and self.config.kind == CHAT and scope["path"].startswith("/v1/responses/"):
            handler = self._stored_response
        if handler is None:
            await _send(send, 404, b'{"detail":"Not Found"}')
            return
        if self.config.api_key and scope["path"].startswith(("/v1", "/v2")):
            auth = _header(scope, b"authorization")
            if auth != f"Bearer {self.config.api_key}".encode():
                await _send(send, 401, b'{"error":"Unauthorized"}')
                return
        body = b""
        if scope["method"] == "POST":
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        self.metrics.http.labels(scope["path"], scope["method"], "2xx").inc()
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await handler(scope, receive, tracked, body)
        except Exception as exc:  # a field of the wrong type: vLLM's schema validation answers 400
            if started:
                raise
            message = f"1 validation error:\n  {type(exc).__name__}: {exc}"
            await _send(send, 400, shapes.error(message, "Bad Request", 400))

    # -- plain routes ----------------------------------------------------------------------------
    async def _health(self, scope, receive, send, body) -> None:
        status = self.state.health_status
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def _models(self, scope, receive, send, body) -> None:
        root = self.config.root or self.config.models[0]
        cards = [shapes.model_card(name, root, self.config.max_model_len) for name in self.config.models]
        cards += [shapes.model_card(name, f"/adapters/{name}", self.config.max_model_len, parent=self.config.models[0])
                  for name in self.config.lora_adapters]
        await _send(send, 200, orjson.dumps({"object": "list", "data": cards}))

    async def _version(self, scope, receive, send, body) -> None:
        await _send(send, 200, orjson.dumps({"version": shapes.VLLM_VERSION}))

    async def _load(self, scope, receive, send, body) -> None:
        await _send(send, 200, orjson.dumps({"server_load": self.state.running}))

    async def _metrics(self, scope, receive, send, body) -> None:
        self.metrics.running.set(self.state.running)
        await _send(send, 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode())

    async def _stats(self, scope, receive, send, body) -> None:
        await _send(send, 200, orjson.dumps(self.state.stats()))

    async def _release(self, scope, receive, send, body) -> None:
        held = self.state.held
        self.state.release_held()
        await _send(send, 200, orjson.dumps({"released": held}))

    async def _set_health(self, scope, receive, send, body) -> None:
        try:
            status = orjson.loads(body)["status"] if scope["method"] == "POST" else None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            status = None
        if type(status) is not int or not 200 <= status <= 599:
            await _send(send, 400, orjson.dumps({"error": 'POST {"status": N} with N from 200 to 599'}))
            return
        self.state.health_status = status
        await _send(send, 200, orjson.dumps({"status": status}))

    # -- model routes ----------------------------------------------------------------------------
    async def _parse(self, scope, send, body) -> tuple[dict | None, str]:
        """The JSON body and the model it names, or None after answering with vLLM's error."""
        ctype = (_header(scope, b"content-type") or b"").split(b";")[0].strip()
        if ctype != b"application/json":
            await _send(send, 400, shapes.error("1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed", "Bad Request", 400))
            return None, ""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            await _send(send, 400, shapes.json_error(body))
            return None, ""
        if not isinstance(data, dict):
            await _send(send, 400, shapes.error("1 validation error:\n  Input should be an object", "Bad Request", 400, "body"))
            return None, ""
        self._record(scope, data)
        model = data.get("model") or self.config.models[0]
        served = self.config.models + self.config.lora_adapters
        if model not in served:
            if self.config.kind == CHAT:
                message = f"The model `{model}` does not exist. Valid aliases: {', '.join(self.config.models)}."
                await _send(send, 404, shapes.error(message, "NotFoundError", 404, "model"))
            else:  # vLLM's pooling routes word it differently
                await _send(send, 404, shapes.error(f"The model `{model}` does not exist.", "NotFoundError", 404))
            return None, ""
        return data, (model if model in self.config.lora_adapters else self.config.models[0])

    def _record(self, scope: dict, data: Any) -> None:
        self.state.received += 1
        self.state.requests.append({
            "path": scope["path"],
            "client": scope.get("client"),  # the peer address: which connection it came on
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "body": data,
        })

    async def _fault(self, scope, send) -> str | None:
        fault = (_header(scope, b"x-sim-fault") or b"").decode()
        if fault == "status_503":
            await _send(send, 503, shapes.error("The engine is currently busy and cannot accept new requests.", "Service Unavailable", 503))
            return "done"
        if fault == "status_500":
            await _send(send, 500, shapes.error("The server had an error while processing your request.", "InternalServerError", 500))
            return "done"
        if fault == "garbage_json":
            await _send(send, 200, b"<html>not json at all")
            return "done"
        return fault or None

    async def _chat(self, scope, receive, send, body) -> None:
        await self._generate(scope, receive, send, body, chat=True)

    async def _completions(self, scope, receive, send, body) -> None:
        await self._generate(scope, receive, send, body, chat=False)

    async def _generate(self, scope, receive, send, body, chat: bool) -> None:
        data, model = await self._parse(scope, send, body)
        if data is None:
            return
        fault = await self._fault(scope, send)
        if fault == "done":
            return
        if chat and not isinstance(data.get("messages"), list):
            await _send(send, 400, shapes.missing_field_error("messages", data))
            return
        if not chat and not data.get("prompt"):
            await _send(send, 400, shapes.error("Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
                                                "BadRequestError", 400, "prompt"))
            return
        max_tokens = data.get("max_tokens") or data.get("max_completion_tokens") or self.config.default_max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            await _send(send, 400, shapes.error("max_tokens must be at least 1", "BadRequestError", 400, "max_tokens"))
            return
        if max_tokens > self.config.max_model_len:
            message = (f"max_tokens={max_tokens} cannot be greater than max_model_len={self.config.max_model_len}. "
                       f"Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})")
            await _send(send, 400, shapes.error(message, "BadRequestError", 400, "max_tokens"))
            return
        prompt_text = orjson.dumps(data.get("messages") if chat else data.get("prompt")).decode()
        prompt_tokens = shapes.tokens_for(prompt_text)
        delay = self.config.token_delay * (10 if fault == "slow" else 1)
        rid = shapes.request_id("chatcmpl" if chat else "cmpl", (_header(scope, b"x-request-id") or b"").decode() or None)
        if data.get("stream"):
            include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
            chunks = self._stream_chunks(rid, model, chat, max_tokens, prompt_tokens, include_usage, delay, fault)
            await self._run_streaming(scope, receive, send, chunks)
        else:
            work = self._complete(rid, model, chat, max_tokens, prompt_tokens, delay, fault)
            await self._run_with_cancellation(receive, send, work)

    async def _stream_chunks(self, rid, model, chat, max_tokens, prompt_tokens, include_usage, delay, fault):
        created = int(time.time())
        started = time.perf_counter()
        if fault == "hold":
            await self.state.hold()
        if chat:
            yield shapes.chat_chunk(rid, created, model, {"role": "assistant", "content": ""}, None, first=True)
        for i in range(max_tokens):
            if delay:
                await asyncio.sleep(delay)
            if i == 0:
                self.metrics.ttft.observe(time.perf_counter() - started)
            if i == 2 and fault == "hang_stream":
                await asyncio.sleep(3600)
            if i == 2 and fault == "close_mid_stream":
                raise ConnectionAbortedError("simulated backend crash mid-stream")
            finish = "length" if i == max_tokens - 1 else None
            piece = shapes.word(i)
            marked = finish is not None and not include_usage
            if chat:
                yield shapes.chat_chunk(rid, created, model, {"content": piece}, finish, fingerprint=marked)
            else:
                yield shapes.text_chunk(rid, created, model, piece, finish, fingerprint=marked)
        self._count_tokens(prompt_tokens, max_tokens, started)
        if include_usage:
            yield shapes.usage_chunk(rid, created, model, "chat.completion.chunk" if chat else "text_completion",
                                     prompt_tokens, max_tokens)
        yield shapes.DONE

    async def _complete(self, rid, model, chat, max_tokens, prompt_tokens, delay, fault) -> tuple[int, bytes]:
        started = time.perf_counter()
        if fault == "hang_head":
            await asyncio.sleep(3600)
        if fault == "hold":
            await self.state.hold()
        if delay:
            await asyncio.sleep(delay * max_tokens)
        text = "".join(shapes.word(i) for i in range(max_tokens))
        self.metrics.ttft.observe(time.perf_counter() - started)
        self._count_tokens(prompt_tokens, max_tokens, started)
        build = shapes.chat_completion if chat else shapes.text_completion
        return 200, orjson.dumps(build(rid, model, text, prompt_tokens, max_tokens, "length"))

    def _count_tokens(self, prompt_tokens: int, completion_tokens: int, started: float) -> None:
        m = self.metrics
        m.prompt.inc(prompt_tokens)
        m.generation.inc(completion_tokens)
        m.success.labels(*m.key, "length").inc()
        m.e2e.observe(time.perf_counter() - started)
        m.iteration.observe(prompt_tokens + completion_tokens)

    async def _embeddings(self, scope, receive, send, body) -> None:
        data, model = await self._parse(scope, send, body)
        if data is None or await self._fault(scope, send) == "done":
            return
        raw = data.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            await _send(send, 400, shapes.error("1 validation error:\n  input must be a string or a list of strings", "Bad Request", 400, "body.input"))
            return
        rid = shapes.request_id("embd", None)
        self.metrics.prompt.inc(sum(shapes.tokens_for(t) for t in inputs))
        payload = orjson.dumps(shapes.embeddings(rid, model, inputs, self.config.embedding_dim,
                                                 base64_encoded=data.get("encoding_format") == "base64"))
        await self._run_with_cancellation(receive, send, _ready(200, payload))

    async def _classify(self, scope, receive, send, body) -> None:
        data, model = await self._parse(scope, send, body)
        if data is None:
            return
        await _send(send, 200, orjson.dumps({"id": shapes.request_id("classify", None), "object": "list", "model": model,
                                             "data": [{"index": 0, "label": "LABEL_0", "probs": [1.0], "num_classes": 1}]}))

    async def _score(self, scope, receive, send, body) -> None:
        data, model = await self._parse(scope, send, body)
        if data is None:
            return
        await _send(send, 200, orjson.dumps({"id": shapes.request_id("score", None), "object": "list", "model": model,
                                             "data": [{"index": 0, "object": "score", "score": 0.5}]}))

    async def _rerank(self, scope, receive, send, body) -> None:
        data, model = await self._parse(scope, send, body)
        if data is None:
            return
        documents = data.get("documents") or []
        results = [{"index": i, "document": {"text": d if isinstance(d, str) else ""}, "relevance_score": 1.0 / (i + 1)}
                   for i, d in enumerate(documents)]
        await _send(send, 200, orjson.dumps({"id": shapes.request_id("rerank", None), "model": model, "results": results}))

    async def _tokenize(self, scope, receive, send, body) -> None:
        data, model = await self._parse(scope, send, body)
        if data is None:
            return
        text = data.get("prompt") or orjson.dumps(data.get("messages")).decode()
        tokens = list(range(100, 100 + shapes.tokens_for(text)))
        await _send(send, 200, orjson.dumps({"count": len(tokens), "max_model_len": self.config.max_model_len,
                                             "tokens": tokens, "token_strs": None}))

    async def _detokenize(self, scope, receive, send, body) -> None:
        data, model = await self._parse(scope, send, body)
        if data is None:
            return
        tokens = data.get("tokens") or []
        await _send(send, 200, orjson.dumps({"prompt": "".join(shapes.word(t) for t in tokens if isinstance(t, int))}))

    async def _responses(self, scope, receive, send, body) -> None:
        """A four-word answer, kept like vLLM's store does (`VLLM_ENABLE_RESPONSES_API_STORE=1`)
        unless `store` is false; `previous_response_id` must name one this process keeps."""
        data, model = await self._parse(scope, send, body)
        if data is None:
            return
        previous = data.get("previous_response_id")
        if previous is not None and previous not in self.stored_responses:
            await _send(send, 404, shapes.error(f"Response with id '{previous}' not found.", "invalid_request_error",
                                                404, "previous_response_id"))
            return
        text = "".join(shapes.word(i) for i in range(4))
        response = {
            "id": f"resp_{uuid.uuid4().hex[:16]}", "object": "response", "created_at": int(time.time()), "model": model,
            "status": "completed", "previous_response_id": previous,
            "output": [{"type": "message", "id": "msg_sim", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": {"input_tokens": 4, "output_tokens": 4, "total_tokens": 8},
        }
        if data.get("store", True):
            self.stored_responses[response["id"]] = response
        if not data.get("stream"):
            await _send(send, 200, orjson.dumps(response))
            return
        events = [("response.created", {"response": {**response, "status": "in_progress", "output": []}})]
        events += [("response.output_text.delta", {"item_id": "msg_sim", "output_index": 0, "content_index": 0,
                                                   "delta": shapes.word(i)}) for i in range(4)]
        events.append(("response.completed", {"response": response}))

        async def chunks():
            for number, (kind, fields) in enumerate(events):
                yield b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps({"type": kind, "sequence_number": number, **fields}))
                await asyncio.sleep(self.config.token_delay)

        await self._run_streaming(scope, receive, send, chunks())

    async def _stored_response(self, scope, receive, send, body) -> None:
        """`GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` on the responses this process keeps."""
        rest = scope["path"][len("/v1/responses/"):]
        response_id, _, action = rest.partition("/")
        self._record(scope, {"response_id": response_id, "action": action or "retrieve"})
        if (scope["method"], action) not in (("GET", ""), ("POST", "cancel")):
            await _send(send, 405 if action in ("", "cancel") else 404, b'{"detail":"Method Not Allowed"}')
            return
        response = self.stored_responses.get(response_id)
        if response is None:
            await _send(send, 404, shapes.error(f"Response with id '{response_id}' not found.", "invalid_request_error",
                                                404, "response_id"))
            return
        if action == "cancel":
            response = {**response, "status": "cancelled"}
        await _send(send, 200, orjson.dumps(response))

    async def _transcription(self, scope, receive, send, body) -> None:
        ctype = _header(scope, b"content-type") or b""
        if not ctype.startswith(b"multipart/form-data"):
            await _send(send, 400, shapes.error("expected multipart/form-data", "Bad Request", 400))
            return
        model = _form_field(body, ctype, b"model")
        self._record(scope, {"model": model, "bytes": len(body)})
        if model is not None and model not in self.config.models:
            await _send(send, 404, shapes.error(f"The model `{model}` does not exist.", "NotFoundError", 404, "model"))
            return
        await _send(send, 200, orjson.dumps({"text": f"transcribed {len(body)} bytes", "usage": {"type": "duration", "seconds": 1}}))

    # -- realtime transcription (WebSocket) --------------------------------------------------------
    async def _realtime(self, scope, receive, send) -> None:
        """`/v1/realtime` as vLLM's `RealtimeConnection` serves it: `session.created` on connect; a
        `session.update` must name a served model before `input_audio_buffer.commit`, else an error
        event (`{"type": "error", "error": "<message>", "code": ...}`, vLLM's shape); a commit starts
        a transcription that answers a `transcription.delta` per audio chunk appended, and a commit
        with `"final": true` ends it with `transcription.done`. vLLM sends no `session.updated`.
        Each session is recorded in `state.realtime` (handshake headers, event types, model, audio
        and binary bytes, who closed it and with what code). Test hook, like `x-sim-fault`: the event
        `{"type": "_sim.close", "code": N, "reason": "..."}` makes the server close with that code."""
        if (await receive())["type"] != "websocket.connect":
            return
        self.state.saw(scope["path"])
        if scope["path"] != "/v1/realtime" or self.config.kind != CHAT:
            await send({"type": "websocket.close", "code": 1000})  # no such route: a 403 handshake
            return
        if self.config.api_key and _header(scope, b"authorization") != f"Bearer {self.config.api_key}".encode():
            await send({"type": "websocket.http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "websocket.http.response.body", "body": b'{"error":"Unauthorized"}'})
            return
        session: dict[str, Any] = {
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "events": [], "model": None, "audio_bytes": 0, "binary_bytes": 0, "transcriptions": 0,
            "open": True, "closed_by": None, "close_code": None,
        }
        self.state.realtime.append(session)
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
                    elif model not in self.config.models:
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

    # -- lifecycle of one generation, as vLLM runs it ----------------------------------------------
    async def _run_with_cancellation(self, receive, send, work) -> None:
        """A non-streaming answer: computed while the client is watched, then sent whole."""
        finished, result = await self._unless_client_leaves(receive, work)
        if finished:
            await _send(send, *result)

    async def _run_streaming(self, scope, receive, send, chunks) -> None:
        await self._unless_client_leaves(receive, self._pump(send, chunks))

    async def _unless_client_leaves(self, receive, work) -> tuple[bool, Any]:
        """vLLM's `with_cancellation`: the work races a task that waits for the client to leave;
        if the client wins, the work is cancelled (vLLM aborts the generation)."""
        state = self.state
        state.start()
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                task.cancel()
                state.disconnects += 1
                self.metrics.success.labels(*self.metrics.key, "abort").inc()
                return False, None
            result = task.result()
            state.completed += 1
            return True, result
        finally:
            watcher.cancel()
            task.cancel()
            state.running -= 1

    async def _pump(self, send, chunks) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _ready(status: int, payload: bytes) -> tuple[int, bytes]:
    return status, payload


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send(send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _form_field(body: bytes, ctype: bytes, name: bytes) -> str | None:
    from ..forwarding.request_body import find_form_field, multipart_boundary

    span = find_form_field(body, multipart_boundary([(b"content-type", ctype)]), name)
    return body[span[0]:span[1]].decode() if span else None
