"""Which backend address holds a stored response (the stateful Responses API).

vLLM keeps a `/v1/responses` answer in the memory of the process that made it (with
`VLLM_ENABLE_RESPONSES_API_STORE=1`): `GET /v1/responses/{id}`, `POST .../cancel` and a later
request's `previous_response_id` only work on that same process. None of them names a model, or
names one served by several addresses. The gateway remembers, for each response it relayed, the
address it came from; a response it does not know (made before a restart, or by another worker)
is looked for on every backend in turn.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

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


def id_in_stream(first_bytes: bytes) -> str | None:
    """The response id announced by a Responses stream's first event (`response.created`)."""
    match = _ID_IN_EVENT.search(first_bytes)
    return match.group(1).decode() if match else None
