"""vLLM's runtime LoRA routes, `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter`, and
what each of their answers means (vLLM 0.32 `entrypoints/serve/lora/api_router.py`,
`entrypoints/openai/models/serving.py`):

- load 200 (plain text "Success: ..."): loaded. 400 `InvalidUserInput` "... has already been loaded":
  it is there already (an earlier gateway run, or another client), so loaded too. 404
  `NotFoundError` "Loading lora x failed: No adapter found for <path>": no such folder or hub repo.
  500 "Call to add_lora method failed: ... '<reason>'": the worker refused it (rank above
  --max-lora-rank, DoRA, bias, tensors that do not fit the base model, LoRA not enabled).
  FastAPI's 404/405 `{"detail": ...}`: the routes are not there (no VLLM_ALLOW_RUNTIME_LORA_UPDATING).
- unload 200: gone. 404 "cannot be found": gone already.
- a request naming an adapter vLLM does not hold: 404 "The model `x` does not exist." (`unknown_model`).

Transport failures are raised as httpx's errors; the caller maps them like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import orjson

from .config import AdapterSpec

LOAD_ROUTE = "/v1/load_lora_adapter"
UNLOAD_ROUTE = "/v1/unload_lora_adapter"
LOADED, REFUSED, NOT_FOUND, NO_ROUTES, BUSY = "loaded", "refused", "not_found", "no_routes", "busy"


@dataclass(frozen=True, slots=True)
class LoadAnswer:
    outcome: str  # one of the constants above
    status: int
    reason: str  # vLLM's message (or what the gateway saw)


async def load(client: httpx.AsyncClient, spec: AdapterSpec, timeout: float) -> LoadAnswer:
    response = await client.post(LOAD_ROUTE, json={"lora_name": spec.name, "lora_path": spec.lora_path},
                                 timeout=timeout)
    status = response.status_code
    if status == 200:
        return LoadAnswer(LOADED, status, response.text)
    message, is_vllm_error = _message(response)
    if status == 400 and "has already been loaded" in message:
        return LoadAnswer(LOADED, status, message)
    if not is_vllm_error and status in (404, 405):
        return LoadAnswer(NO_ROUTES, status, f"POST {LOAD_ROUTE} answered {status} ({message}): the backend does not "
                                             f"allow runtime adapter loading; start it with "
                                             f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora")
    if status == 404:
        return LoadAnswer(NOT_FOUND, status, message)
    if status in (502, 503, 504):  # busy, sleeping, or behind a proxy that lost it: try again later
        return LoadAnswer(BUSY, status, message)
    return LoadAnswer(REFUSED, status, message)


async def unload(client: httpx.AsyncClient, name: str, timeout: float) -> bool:
    """True when the backend no longer holds `name` (unloaded now, or not there)."""
    response = await client.post(UNLOAD_ROUTE, json={"lora_name": name}, timeout=timeout)
    return response.status_code in (200, 404)


def unknown_model(payload: bytes, name: str) -> bool:
    """Is this 404 body vLLM's "The model `name` does not exist" (it does not hold the adapter)?"""
    return b"does not exist" in payload and f"`{name}`".encode() in payload


def _message(response: httpx.Response) -> tuple[str, bool]:
    """vLLM's error message, and whether the body was vLLM's error shape at all."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:500] or f"HTTP {response.status_code}", False
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"], True
        if isinstance(body.get("detail"), str):
            return body["detail"], False
    return response.text[:500], False


__all__ = ["BUSY", "LOADED", "LOAD_ROUTE", "NOT_FOUND", "NO_ROUTES", "REFUSED", "UNLOAD_ROUTE", "LoadAnswer", "load",
           "unknown_model", "unload"]
