"""Which backend address holds a stored response (the stateful Responses API).

vLLM keeps a `/v1/responses` answer in the memory of the process that made it (with
`VLLM_ENABLE_RESPONSES_API_STORE=1`): `GET /v1/responses/{id}`, `POST .../cancel` and a later
request's `previous_response_id` only work on that same process. None of them names a model, or
names one served by several addresses. The gateway remembers, for each response it relayed, the
address it came from; a response it does not know (made before a restart, or by another worker)
is looked for on every backend in turn.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from dataclasses import dataclass

import httpx
import orjson

from ..routing.backend import Backend, Upstream

RESPONSE_ID = re.compile(r"^resp_[A-Za-z0-9_-]{1,200}$")
_ID_IN_EVENT = re.compile(rb'"id"\s*:\s*"(resp_[A-Za-z0-9_-]{1,200})"')


@dataclass(frozen=True, slots=True)
class Holder:
    backend: str
    url: str
    model: str


class ResponseAffinity:
    """A bounded map from response id to the address that holds it, least recently used first out."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._holders: OrderedDict[str, Holder] = OrderedDict()

    def __len__(self) -> int:
        return len(self._holders)

    def remember(self, response_id: str, holder: Holder) -> None:
        holders = self._holders
        holders[response_id] = holder
        holders.move_to_end(response_id)
        while len(holders) > self.capacity:
            holders.popitem(last=False)

    def holder(self, response_id: str) -> Holder | None:
        holder = self._holders.get(response_id)
        if holder is not None:
            self._holders.move_to_end(response_id)
        return holder


class StoredResponses:
    """Finding the address that holds a stored response, by memory or by asking."""

    def __init__(self, affinity: ResponseAffinity) -> None:
        self.affinity = affinity

    async def holder(self, response_id: str, backends: list[Backend]) -> tuple[Backend, Upstream, str] | None:
        """Which of `backends`' addresses holds this stored response, and under which model:
        remembered from when the gateway relayed it, else asked of every address at once
        (`GET /v1/responses/{id}`); with a single address, that one (it answers 404 itself)."""
        holder = self.affinity.holder(response_id)
        if holder is not None:
            for backend in backends:
                if backend.name == holder.backend:
                    for upstream in backend.upstreams:
                        if upstream.url == holder.url:
                            return backend, upstream, holder.model
            return None
        addresses = [(b, u) for b in backends for u in b.upstreams]
        if len(addresses) == 1:
            backend, upstream = addresses[0]
            return backend, upstream, _served_model(backend)
        answers = await asyncio.gather(*(_holds(u, response_id, b.timeouts.response_head) for b, u in addresses))
        for (backend, upstream), model in zip(addresses, answers, strict=False):
            if model is not None:
                model = model if model in backend.model_names else _served_model(backend)
                self.affinity.remember(response_id, Holder(backend.name, upstream.url, model))
                return backend, upstream, model
        return None


async def _holds(upstream: Upstream, response_id: str, timeout: float) -> str | None:
    """Whether this address holds the stored response: its model if so (a bounded metrics label)."""
    try:
        answer = await upstream.client.get(f"/v1/responses/{response_id}", timeout=timeout)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    try:
        model = orjson.loads(answer.content).get("model")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return model if isinstance(model, str) else ""


def _served_model(backend: Backend) -> str:
    models = backend.model_names
    return models[0] if models else backend.name


def id_in_stream(first_bytes: bytes) -> str | None:
    """The response id announced by a Responses stream's first event (`response.created`)."""
    match = _ID_IN_EVENT.search(first_bytes)
    return match.group(1).decode() if match else None
