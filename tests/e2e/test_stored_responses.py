"""The stateful Responses API through the gateway, with the official SDK: a stored response is
found again on the process that made it, even when its model is served by several addresses."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.servers import CHAT, gateway, running, simulator

MODEL = "sim-chat"


@pytest.fixture(scope="module")
def replicas():
    """One model on two processes: each keeps only its own responses, as vLLM's store does."""
    with running(simulator([MODEL], CHAT)) as first, running(simulator([MODEL], CHAT)) as second:
        yield first, second


@pytest.fixture
def gw(replicas):
    first, second = replicas
    with gateway({"name": "chat", "urls": [first.url, second.url]}) as gw:
        yield gw


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)


def holder(replicas, response_id: str) -> int:
    (index,) = [i for i, sim in enumerate(replicas) if response_id in sim.app.stored_responses]
    return index


def made_concurrently(gw, count: int) -> list:
    """Responses created at once: least-outstanding balancing, ties taken in turn, spreads them over
    both replicas."""
    async def create() -> list:
        async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
            return await asyncio.gather(*(client.responses.create(model=MODEL, input="hi") for _ in range(count)))

    return asyncio.run(create())


def test_retrieve_cancel_and_follow_up_reach_the_process_that_holds_the_response(gw, replicas):
    client = sdk(gw)
    made = made_concurrently(gw, 8)
    assert {holder(replicas, r.id) for r in made} == {0, 1}  # both replicas made some: a wrong guess would show
    for response in made:
        assert client.responses.retrieve(response.id).id == response.id
        follow_up = client.responses.create(model=MODEL, input="and then?", previous_response_id=response.id)
        assert follow_up.previous_response_id == response.id
        assert holder(replicas, follow_up.id) == holder(replicas, response.id)
    cancelled = client.responses.cancel(made[0].id)
    assert cancelled.id == made[0].id and cancelled.status == "cancelled"


def test_a_streamed_response_is_remembered_from_its_first_event(gw, replicas):
    async def streamed() -> list:
        async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
            async def one() -> list:
                stream = await client.responses.create(model=MODEL, input="hi", stream=True)
                return [event async for event in stream]

            return await asyncio.gather(*(one() for _ in range(8)))

    ids = []
    for events in asyncio.run(streamed()):
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        ids.append(events[-1].response.id)
    assert {holder(replicas, i) for i in ids} == {0, 1}
    client = sdk(gw)
    for response_id in ids:
        assert client.responses.retrieve(response_id).status == "completed"


def test_a_response_made_before_the_gateway_started_is_found_by_asking_every_address(replicas):
    with gateway({"name": "chat", "urls": [r.url for r in replicas]}) as first_gateway:
        made = made_concurrently(first_gateway, 8)
    assert {holder(replicas, r.id) for r in made} == {0, 1}
    with gateway({"name": "chat", "urls": [r.url for r in replicas]}) as fresh:
        client = sdk(fresh)
        for response in made:
            assert client.responses.retrieve(response.id).id == response.id
        page = httpx.get(f"{fresh.url}/metrics").text
        assert 'endpoint="/v1/responses/{response_id}"' in page and made[0].id not in page


def test_unknown_and_malformed_ids_get_openai_errors(gw, replicas):
    client = sdk(gw)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve("resp_0000000000000000")
    assert missing.value.body["code"] == "response_not_found" and missing.value.body["param"] == "response_id"
    answer = httpx.get(f"{gw.url}/v1/responses/not-a-response-id")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_response_id"
    assert httpx.delete(f"{gw.url}/v1/responses/resp_0000000000000000").status_code == 405
