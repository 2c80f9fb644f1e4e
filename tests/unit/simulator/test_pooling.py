"""`pooling.py`: embeddings as vLLM 0.32.0 answers them, float and base64."""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest

from vllm_gateway.simulator import Simulator, SimulatorConfig

from .replay import EMBED_SIM, Sample, exactly_as_captured, send, shaped_as_captured


def test_unknown_model_is_worded_as_vllms_pooling_routes_word_it() -> None:
    exactly_as_captured("err_unknown_model_embed.txt", **EMBED_SIM)


@pytest.mark.parametrize("name", ["embeddings.txt", "embeddings_base64.txt"])
def test_embeddings_have_vllm_fields(name: str) -> None:
    shaped_as_captured(name, **EMBED_SIM)


def test_base64_embeddings_decode_to_the_float_vector() -> None:
    sim = Simulator(SimulatorConfig(**EMBED_SIM))
    floats = asyncio.run(send(sim, Sample.request("POST", "/v1/embeddings", {"input": "hello"}))).json()
    packed = asyncio.run(send(sim, Sample.request("POST", "/v1/embeddings",
                                                  {"input": "hello", "encoding_format": "base64"}))).json()
    vector = floats["data"][0]["embedding"]
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == len(vector) == 384
    assert decoded == pytest.approx(vector, rel=1e-6)
