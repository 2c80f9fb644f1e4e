"""Replaying captures of a real vLLM 0.32.0 server (`tests/fixtures/vllm-samples/`) against a simulator.

Bodies whose values are deterministic (errors) must match byte for byte; generated ones (ids,
timestamps, text, vectors) must have the same fields in the same order, recursively.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import orjson

from vllm_gateway.simulator import CHAT, EMBEDDING, Simulator, SimulatorConfig

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "vllm-samples"
CHAT_SIM: dict[str, Any] = {"models": ["tiny-chat"], "kind": CHAT, "root": "MODELS/tiny-chat", "max_model_len": 512}
EMBED_SIM: dict[str, Any] = {"models": ["tiny-embed"], "kind": EMBEDDING, "root": "MODELS/tiny-embed", "max_model_len": 512,
                                 "embedding_dim": 384}


class Sample:
    """One capture: request line, body, and the raw response (status, headers, body)."""

    def __init__(self, name: str) -> None:
        with open(SAMPLES / name, encoding="utf-8", newline="") as file:  # keep the CRLFs of the HTTP head
            text = file.read()
        request = re.search(r"^### REQUEST: (\w+) http://[^/]+(\S+)", text, re.MULTILINE)
        assert request is not None, name
        self.method, self.path = request.group(1), request.group(2)
        body = re.search(r"^### BODY: (.*)$", text, re.MULTILINE)
        extra = re.search(r"^### EXTRA CURL ARGS: -H Content-Type: (\S+) --data-binary (.*)$", text, re.MULTILINE)
        self.content_type = extra.group(1) if extra else "application/json"
        self.body = (extra.group(2) if extra else body.group(1) if body else "").encode()
        raw = text.split("### RESPONSE (raw, curl -i):\n", 1)[1].rsplit("\n### time_total", 1)[0]
        head, _, self.response = raw.partition("\r\n\r\n")
        lines = head.split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = dict(line.split(": ", 1) for line in lines[1:])

    @classmethod
    def request(cls, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Sample:
        """A request of our own, sent the way a capture's is."""
        sample = cls.__new__(cls)
        sample.method, sample.path, sample.content_type = method, path, content_type
        sample.body = b"" if body is None else orjson.dumps(body)
        return sample

    def json(self) -> Any:
        return orjson.loads(self.response)

    def events(self) -> list[Any]:
        return events(self.response)


def events(text: str) -> list[Any]:
    """An SSE body's `data:` payloads, `[DONE]` as the string."""
    return [orjson.loads(e[6:]) if e != "data: [DONE]" else "[DONE]" for e in text.strip().split("\n\n")]


def shape(value: Any) -> Any:
    """Field names (ordered), recursively; lists by their first element."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


async def send(sim: Simulator, sample: Sample) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as client:
        return await client.request(sample.method, sample.path, content=sample.body or None,
                                    headers={"content-type": sample.content_type} if sample.body else {})


def replay(name: str, **config: Any) -> tuple[Sample, httpx.Response]:
    sample = Sample(name)
    return sample, asyncio.run(send(Simulator(SimulatorConfig(**config)), sample))


def exactly_as_captured(name: str, **config: Any) -> None:
    sample, response = replay(name, **config)
    assert response.status_code == sample.status
    assert response.text == sample.response
    if "content-type" in sample.headers:
        assert response.headers["content-type"] == sample.headers["content-type"]


def shaped_as_captured(name: str, **config: Any) -> None:
    sample, response = replay(name, **config)
    assert response.status_code == sample.status
    assert response.headers["content-type"] == sample.headers["content-type"]
    assert shape(response.json()) == shape(sample.json())
