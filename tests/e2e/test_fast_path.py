"""`fast_path`: the gateway's own server protocol by default, stock uvicorn when turned off; the
OpenAI SDK sees the same either way (`make test` runs the whole end-to-end set both ways)."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.servers import gateway
from vllm_gateway.http.protocol import GatewayHttpToolsProtocol


@pytest.mark.parametrize("fast_path", [True, False])
def test_both_servers_answer_chat_and_streams_alike(chat_backend, fast_path: bool, monkeypatch) -> None:
    monkeypatch.delenv("GATEWAY_FAST_PATH", raising=False)  # the environment would win over the setting
    with gateway({"name": "chat", "url": chat_backend.url}, fast_path=fast_path) as gw:
        protocol = gw.uvicorn.config.http
        assert (protocol is GatewayHttpToolsProtocol) is fast_path
        assert fast_path or protocol == "httptools"
        client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=4)
        assert answer.choices[0].message.content and answer.usage.completion_tokens == 4
        chunks = list(client.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=4, stream=True))
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 4
