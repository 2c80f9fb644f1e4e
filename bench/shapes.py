"""Fixed vLLM-shaped payloads: request bodies, a chat completion, a model list and SSE chunks.

Shapes follow the captures in the vLLM reference (chat.txt, chat_stream.txt): the same keys, so
the gateway does the same work it does in front of a real vLLM. Everything is built once.
"""

from __future__ import annotations

import json

MODELS = ("bench-model-a", "bench-model-b")
CREATED = 1795369049


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def request_body(model: str, size: str, stream: bool = False) -> bytes:
    """A chat request: `small` is about 300 bytes, `large` about 200 KB (a long prompt)."""
    if size == "small":
        content = ("Summarise in one sentence why a reverse proxy in front of an inference server "
                   "should add as little latency as possible.")
    elif size == "large":
        line = "The quick brown fox jumps over the lazy dog while the router forwards bytes. "
        content = line * (200_000 // len(line))
    else:
        raise ValueError(size)
    body: dict[str, object] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": content},
        ],
        "max_tokens": 64,
        "temperature": 0.7,
        "top_p": 0.95,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return _dumps(body)


def chat_completion(model: str) -> bytes:
    return _dumps({
        "id": "chatcmpl-8267bca1ca6e7c4d", "object": "chat.completion", "created": CREATED, "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "A proxy sits on every request, so its cost multiplies.",
                        "refusal": None, "annotations": None, "audio": None, "function_call": None,
                        "reasoning": None},
            "logprobs": None, "finish_reason": "stop", "stop_reason": None, "token_ids": None,
        }],
        "service_tier": None, "system_fingerprint": "vllm-0.32.0-bench",
        "usage": {"prompt_tokens": 31, "total_tokens": 43, "completion_tokens": 12,
                  "prompt_tokens_details": None, "completion_tokens_details": None},
        "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None,
    })


def model_list(model: str) -> bytes:
    return _dumps({"object": "list", "data": [{
        "id": model, "object": "model", "created": CREATED, "owned_by": "vllm", "root": f"bench/{model}",
        "parent": None, "max_model_len": 4096, "permission": [],
    }]})


def sse_events(model: str, count: int) -> list[bytes]:
    """`count` chunk events; the last carries finish_reason and is followed by a usage chunk and [DONE]."""
    head = {"id": "chatcmpl-b0b25b96c77091bd", "object": "chat.completion.chunk", "created": CREATED, "model": model}
    events = []
    for index in range(count):
        if index == 0:
            choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        else:
            last = index == count - 1
            choice = {"index": 0, "delta": {"content": f" tok{index}"}, "logprobs": None,
                      "finish_reason": "length" if last else None, "token_ids": None}
            if last:
                choice["stop_reason"] = None
        events.append(b"data: " + _dumps({**head, "choices": [choice]}) + b"\n\n")
    usage = {**head, "choices": [], "usage": {"prompt_tokens": 31, "total_tokens": 31 + count, "completion_tokens": count}}
    events[-1] += b"data: " + _dumps(usage) + b"\n\ndata: [DONE]\n\n"
    return events
