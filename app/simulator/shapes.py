"""vLLM-shaped bodies: model cards, completions, chunks, embeddings and errors.

Field sets and orders follow captures of a real vLLM server (`vllm-samples/`), so clients and
the gateway see what they would see in production.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import struct
import time
import uuid
from typing import Any

import orjson

VLLM_VERSION = "0.32.0"
FINGERPRINT = f"vllm-{VLLM_VERSION}-sim00000"
_WORDS = (
    " the", " model", " gateway", " token", " stream", " routes", " cache", " of", " a", " to",
    " GPU", " vLLM", " request", " answer", " and", " fast", " one", " port", " two", " is",
)


def model_card(name: str, root: str, max_model_len: int, parent: str | None = None) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": name, "object": "model", "created": now, "owned_by": "vllm", "root": root, "parent": parent,
        "max_model_len": max_model_len if parent is None else None,
        "permission": [{
            "id": f"modelperm-{uuid.uuid4().hex[:16]}", "object": "model_permission", "created": now,
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
            "organization": "*", "group": None, "is_blocking": False,
        }],
    }


def tokens_for(text: str) -> int:
    """A stable stand-in for a tokenizer: about one token per four characters, at least one."""
    return max(1, math.ceil(len(text) / 4))


_GARBAGE = (" \ufffd", " <unk>", " ####", " \u0120\u0120", " \xff\xfe", " ?!?", " \x00", " ~~~")


def word(i: int) -> str:
    return _WORDS[i % len(_WORDS)]


def vocabulary(adapter: str | None = None, garbage: bool = False) -> tuple[str, ...]:
    """The words an answer is made of: the base model's, an order of its own per adapter (so a
    test can tell which adapter answered), or nonsense from weights that were never reloaded."""
    if garbage:
        return _GARBAGE
    if adapter is None:
        return _WORDS
    words = list(_WORDS)
    random.Random(hashlib.sha256(adapter.encode()).digest()).shuffle(words)
    return tuple(words)


def text(words: tuple[str, ...], count: int) -> str:
    return "".join(words[i % len(words)] for i in range(count))


def chat_completion(rid: str, model: str, text: str, prompt_tokens: int, completion_tokens: int, finish: str) -> dict:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None, "annotations": None,
                        "audio": None, "function_call": None, "reasoning": None},
            "logprobs": None, "finish_reason": finish, "stop_reason": None, "token_ids": None,
            "routed_experts": None,
        }],
        "service_tier": None, "system_fingerprint": FINGERPRINT,
        "usage": _usage(prompt_tokens, completion_tokens, details=True),
        "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
        "ec_transfer_params": None, "metrics": None,
    }


def text_completion(rid: str, model: str, text: str, prompt_tokens: int, completion_tokens: int, finish: str) -> dict:
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None,
                     "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None}],
        "service_tier": None, "system_fingerprint": FINGERPRINT,
        "usage": _usage(prompt_tokens, completion_tokens, details=True),
        "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
    }


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish: str | None, first: bool = False,
               fingerprint: bool = False) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = None
    if not first:
        choice["token_ids"] = None
    chunk: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [choice]}
    if first:
        chunk["prompt_token_ids"] = None
        chunk["prompt_text"] = None
    if fingerprint:  # vLLM marks the last chunk of a stream without a usage chunk
        chunk["system_fingerprint"] = FINGERPRINT
    return sse(chunk)


def text_chunk(rid: str, created: int, model: str, text: str, finish: str | None, fingerprint: bool = False) -> bytes:
    chunk: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": model,
                             "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish,
                                          "stop_reason": None, "prompt_token_ids": None, "token_ids": None}]}
    if fingerprint:
        chunk["system_fingerprint"] = FINGERPRINT
    return sse(chunk)


def usage_chunk(rid: str, created: int, model: str, obj: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    return sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                "usage": _usage(prompt_tokens, completion_tokens), "system_fingerprint": FINGERPRINT})


def sse(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector per input text."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [((digest[i % len(digest)] * (i + 7)) % 255) / 127.0 - 1.0 for i in range(dim)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def embeddings(rid: str, model: str, inputs: list[str], dim: int, base64_encoded: bool = False, salt: str = "") -> dict:
    """`encoding_format: base64` packs each vector as little-endian float32, as vLLM does
    (the openai SDK asks for it by default). A `salt` (an adapter, garbage weights) moves every vector."""
    vectors: list[Any] = [embedding(salt + t, dim) for t in inputs]
    if base64_encoded:
        vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
    return {
        "id": rid, "object": "list", "created": int(time.time()), "model": model,
        "data": [{"index": i, "object": "embedding", "embedding": v} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": sum(tokens_for(t) for t in inputs), "total_tokens": sum(tokens_for(t) for t in inputs),
                  "completion_tokens": 0, "prompt_tokens_details": None, "completion_tokens_details": None},
    }


def error(message: str, type_: str, status: int, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": status}})


def sanitize(message: str) -> str:
    """vLLM's `sanitize_message` on every error it answers: memory addresses, tracebacks and
    file paths under the usual system folders become `<path>`."""
    message = re.sub(r" at 0x[0-9a-fA-F]+>", ">", message)
    message = re.sub(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?', "", message)
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    message = re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message)
    return message.strip()


def call_failed(method: str, reason: str, executor_backend: str = "uni", in_worker: bool = True) -> str:
    """An engine utility call that raised: vLLM's API answers 500 with this text. A worker in its own
    process (executor backend "mp": the CPU build, tensor parallelism) wraps the worker's error."""
    if in_worker and executor_backend == "mp":
        reason = f"Worker failed with error '{reason}', please check the stack trace above for the root cause"
    return sanitize(f"Call to {method} method failed: {reason}")


def validation_error(errors: list[dict[str, Any]]) -> bytes:
    """FastAPI's request validation failure as vLLM's handler words it: one line per error (a
    Python dict's text), `param` from the first error's location."""
    label = "error" if len(errors) == 1 else "errors"
    message = f"{len(errors)} validation {label}:\n" + "".join(f"  {e}\n" for e in errors)
    return error(sanitize(message.rstrip()), "Bad Request", 400, errors[0]["loc"] if errors else None)


def _usage(prompt: int, completion: int, details: bool = False) -> dict:
    usage: dict[str, int | None] = {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                                    "completion_tokens": completion}
    if details:
        usage.update(prompt_tokens_details=None, completion_tokens_details=None)
    return usage


def request_id(prefix: str, header: str | None) -> str:
    return f"{prefix}-{header}" if header else f"{prefix}-{uuid.uuid4().hex[:16]}"


def json_error(body: bytes) -> bytes:
    """vLLM's answer to a body that is not JSON: pydantic's `json_invalid` with the offset."""
    try:
        json.loads(body)
        position, reason = 0, "Invalid JSON"
    except ValueError as exc:
        position, reason = getattr(exc, "pos", 0), getattr(exc, "msg", str(exc))
    detail = (f"{{'type': 'json_invalid', 'loc': 'body.{position}', 'msg': 'JSON decode error', "
              f"'input': '<dict of 0 items>', 'ctx': {{'error': '{reason}'}}}}")
    return error(f"1 validation error:\n  {detail}", "Bad Request", 400, f"body.{position}")


def missing_field_error(name: str, data: dict) -> bytes:
    detail = f"{{'type': 'missing', 'loc': 'body.{name}', 'msg': 'Field required', 'input': '<dict of {len(data)} items>'}}"
    return error(f"1 validation error:\n  {detail}", "Bad Request", 400, f"body.{name}")
