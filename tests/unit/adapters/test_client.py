"""What each answer of vLLM's runtime LoRA routes means (the bodies are vLLM 0.32's, as captured
from the CPU build)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from vllm_gateway.adapters import client
from vllm_gateway.adapters.config import AdapterSpec

SPEC = AdapterSpec("sql", "/adapters/sql", "/adapters/sql")


def vllm_error(message: str, type_: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.mark.parametrize("status, body, outcome", [
    (200, "Success: LoRA adapter 'sql' added successfully.", client.LOADED),
    (400, vllm_error("The lora adapter 'sql' has already been loaded. If you want to load the adapter in place, set "
                     "'load_inplace' to True.", "InvalidUserInput", 400), client.LOADED),
    (404, vllm_error("Loading lora sql failed: No adapter found for /adapters/sql", "NotFoundError", 404),
     client.NOT_FOUND),
    (500, vllm_error("Call to add_lora method failed: Worker failed with error 'LoRA rank 16 is greater than "
                     "max_lora_rank 8.', please check the stack trace above for the root cause", "InternalServerError",
                     500), client.REFUSED),
    (400, vllm_error("The lora adapter 'sql' conflicts with a served base model.", "InvalidUserInput", 400),
     client.REFUSED),
    (404, {"detail": "Not Found"}, client.NO_ROUTES),  # VLLM_ALLOW_RUNTIME_LORA_UPDATING not set
    (405, {"detail": "Method Not Allowed"}, client.NO_ROUTES),
    (401, {"error": "Unauthorized"}, client.REFUSED),
    (503, vllm_error("The engine is currently busy", "Service Unavailable", 503), client.BUSY),
])
@pytest.mark.anyio
async def test_load_answers(status: int, body: Any, outcome: str) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text=body) if isinstance(body, str) else httpx.Response(status, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://vllm") as http:
        result = await client.load(http, SPEC, 5.0)
    assert result.outcome == outcome and result.status == status
    assert seen[0].url.path == "/v1/load_lora_adapter"
    assert seen[0].read() == b'{"lora_name":"sql","lora_path":"/adapters/sql"}'
    if outcome in (client.NOT_FOUND, client.REFUSED) and isinstance(body, dict) and isinstance(body["error"], dict):
        assert result.reason == body["error"]["message"]  # vLLM's own words reach the client
    if outcome == client.NO_ROUTES:
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in result.reason


@pytest.mark.parametrize("status, gone", [(200, True), (404, True), (400, False), (500, False)])
@pytest.mark.anyio
async def test_unload_answers(status: int, gone: bool) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, text="x"))
    async with httpx.AsyncClient(transport=transport, base_url="http://vllm") as http:
        assert await client.unload(http, "sql", 5.0) is gone


def test_unknown_model_is_vllms_404_for_that_name_only() -> None:
    body = b'{"error":{"message":"The model `sql` does not exist. Valid aliases: base.","type":"NotFoundError"}}'
    assert client.unknown_model(body, "sql")
    assert not client.unknown_model(body, "sq")
    assert not client.unknown_model(b'{"detail":"Not Found"}', "sql")
