"""The registry's model table (from configuration and each backend's `/v1/models`), model
discovery and the health monitor that feed it, and a backend's addresses.

Backends are `httpx.MockTransport` handlers keyed by host, so every answer is under the test's control.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import httpx
import pytest

from vllm_gateway.routing.backend import make_upstream
from vllm_gateway.routing.discovery import ModelDiscovery
from vllm_gateway.routing.health import HealthMonitor
from vllm_gateway.routing.registry import Registry
from vllm_gateway.routing.state import FAILED, READY, STARTING, UNHEALTHY, UNKNOWN
from vllm_gateway.settings import Settings

CARD_FIELDS = ["id", "object", "created", "owned_by", "root", "parent", "max_model_len"]


def card(name: str, root: str | None = None, parent: str | None = None, max_model_len: int | None = 4096) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "vllm", "root": root or f"org/{name}",
            "parent": parent, "max_model_len": max_model_len, "permission": [{"id": "modelperm-1", "object": "model_permission"}]}


class FakeBackends:
    """What each host answers on /health and /v1/models; counts the calls."""

    def __init__(self) -> None:
        self.health: dict[str, Any] = {}
        self.models: dict[str, Any] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.seen_headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls[(host, request.url.path)] += 1
        self.seen_headers.append(request.headers)
        answer = (self.health if request.url.path == "/health" else self.models).get(host, 404)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, int):
            return httpx.Response(answer)
        if isinstance(answer, bytes):
            return httpx.Response(200, content=answer, headers={"content-type": "application/json"})
        return httpx.Response(200, json=answer)


@pytest.fixture
def fake() -> FakeBackends:
    return FakeBackends()


def registry(fake: FakeBackends, *backends: dict[str, Any], **options: Any) -> Registry:
    return Registry(Settings(backends=list(backends), **options), httpx.MockTransport(fake))


def monitor(reg: Registry) -> HealthMonitor:
    return HealthMonitor(reg, ModelDiscovery(reg), reg.settings)


def ids(reg: Registry) -> list[str]:
    return [c["id"] for c in reg.model_cards()]


# -- the table from configuration alone ---------------------------------------------------------------

def test_configured_models_and_aliases_resolve_without_any_io(fake) -> None:
    reg = registry(fake, {"name": "embed", "url": "http://embed:8010", "models": ["Qwen/Qwen3-Embedding-0.6B"],
                          "aliases": ["embed", "text-embedding-3-small"]},
                   {"name": "guard", "url": "http://guard:8000", "models": ["guard-model"]})
    assert fake.calls == Counter()
    direct = reg.resolve("Qwen/Qwen3-Embedding-0.6B")
    assert direct.backend.name == "embed" and direct.upstream_model is None
    alias = reg.resolve("text-embedding-3-small")
    assert alias.backend.name == "embed" and alias.upstream_model == "Qwen/Qwen3-Embedding-0.6B"
    assert reg.resolve("guard-model").backend.name == "guard"
    assert reg.resolve("nope") is None
    assert ids(reg) == ["Qwen/Qwen3-Embedding-0.6B", "embed", "text-embedding-3-small", "guard-model"]


def test_placeholder_cards_have_the_openai_fields(fake) -> None:
    reg = registry(fake, {"name": "a", "url": "http://a:1", "models": ["m"], "aliases": ["alias"]})
    cards = {c["id"]: c for c in reg.model_cards()}
    for name in ("m", "alias"):
        assert list(cards[name]) == CARD_FIELDS
        assert cards[name]["object"] == "model" and isinstance(cards[name]["created"], int)


@pytest.mark.anyio
async def test_an_alias_whose_canonical_name_is_unknown_yet_is_forwarded_as_is(fake) -> None:
    reg = registry(fake, {"name": "a", "url": "http://a:1", "aliases": ["chat"]})
    assert reg.resolve("chat").upstream_model is None
    fake.models["a"] = {"object": "list", "data": [card("served")]}
    await ModelDiscovery(reg).refresh(reg.backends["a"])
    assert reg.resolve("chat").upstream_model == "served"


# -- learning from /v1/models --------------------------------------------------------------------------

@pytest.mark.anyio
async def test_models_learned_from_the_backend_with_lora_and_several_served_names(fake) -> None:
    fake.models["chat"] = {"object": "list", "data": [
        card("Qwen/Qwen3-0.6B", root="/models/qwen"), card("qwen-small", root="/models/qwen"),
        card("sql-lora", root="/adapters/sql", parent="Qwen/Qwen3-0.6B", max_model_len=None),
    ]}
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000", "aliases": ["gpt-4o-mini"]})
    await ModelDiscovery(reg).refresh(reg.backends["chat"])
    assert ids(reg) == ["Qwen/Qwen3-0.6B", "qwen-small", "sql-lora", "gpt-4o-mini"]
    for name in ("Qwen/Qwen3-0.6B", "qwen-small", "sql-lora"):
        route = reg.resolve(name)
        assert route.backend.name == "chat" and route.upstream_model is None  # served names go as they are
    assert reg.resolve("gpt-4o-mini").upstream_model == "Qwen/Qwen3-0.6B"  # first reported base model
    cards = {c["id"]: c for c in reg.model_cards()}
    assert cards["sql-lora"] == fake.models["chat"]["data"][2]  # every field of the backend's card kept
    alias = cards["gpt-4o-mini"]
    assert alias == {**fake.models["chat"]["data"][0], "id": "gpt-4o-mini"}  # the canonical card, renamed


@pytest.mark.anyio
async def test_canonical_name_skips_lora_adapters_listed_first(fake) -> None:
    fake.models["chat"] = {"data": [card("lora-a", parent="base"), card("base")]}
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000", "aliases": ["x"]})
    await ModelDiscovery(reg).refresh(reg.backends["chat"])
    assert reg.backends["chat"].canonical_model == "base" and reg.resolve("x").upstream_model == "base"


@pytest.mark.anyio
async def test_configured_first_model_is_canonical_even_when_reported_second(fake) -> None:
    fake.models["chat"] = {"data": [card("other-name"), card("configured")]}
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000", "models": ["configured"], "aliases": ["x"]})
    await ModelDiscovery(reg).refresh(reg.backends["chat"])
    assert reg.resolve("x").upstream_model == "configured"
    assert ids(reg) == ["other-name", "configured", "x"]


@pytest.mark.anyio
async def test_the_reported_card_replaces_the_placeholder(fake) -> None:
    fake.models["chat"] = {"data": [card("m", root="/weights/m", max_model_len=2048)]}
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000", "models": ["m"], "aliases": ["alias"]})
    assert {c["id"]: c for c in reg.model_cards()}["m"]["root"] is None
    await ModelDiscovery(reg).refresh(reg.backends["chat"])
    cards = {c["id"]: c for c in reg.model_cards()}
    assert cards["m"]["root"] == "/weights/m" and cards["alias"]["max_model_len"] == 2048


@pytest.mark.anyio
async def test_no_duplicate_entries(fake) -> None:
    fake.models["chat"] = {"data": [card("m"), card("m"), card("also-alias")]}
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000", "models": ["m"], "aliases": ["m", "also-alias"]})
    await ModelDiscovery(reg).refresh(reg.backends["chat"])
    assert ids(reg) == ["m", "also-alias"]
    assert reg.resolve("also-alias").upstream_model is None  # really served: no rewrite


@pytest.mark.anyio
async def test_a_model_reported_by_two_backends_stays_with_the_first(fake, caplog) -> None:
    fake.models["one"] = {"data": [card("shared"), card("only-one")]}
    fake.models["two"] = {"data": [card("shared"), card("only-two")]}
    reg = registry(fake, {"name": "one", "url": "http://one:1"}, {"name": "two", "url": "http://two:2"})
    with caplog.at_level(logging.WARNING, logger="vllm_gateway.registry"):
        await ModelDiscovery(reg).refresh_all()
    assert reg.resolve("shared").backend.name == "one" and reg.resolve("only-two").backend.name == "two"
    assert ids(reg).count("shared") == 1
    assert any("'shared'" in r.getMessage() and "'one'" in r.getMessage() and "'two'" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_an_alias_cannot_shadow_another_backends_reported_model(fake) -> None:
    fake.models["one"] = {"data": [card("popular")]}
    fake.models["two"] = {"data": [card("two-model")]}
    reg = registry(fake, {"name": "one", "url": "http://one:1"},
                   {"name": "two", "url": "http://two:2", "aliases": ["popular"]})
    await ModelDiscovery(reg).refresh_all()
    assert reg.resolve("popular").backend.name == "one"
    assert ids(reg).count("popular") == 1


@pytest.mark.parametrize("answer", [500, b"not json", b'{"object": "list"}', b'{"data": "nope"}', b"[1, 2]",
                                    httpx.ConnectError("refused")])
@pytest.mark.anyio
async def test_a_failed_model_listing_keeps_what_was_known(fake, caplog, answer) -> None:
    fake.models["chat"] = {"data": [card("m")]}
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000"})
    await ModelDiscovery(reg).refresh(reg.backends["chat"])
    fake.models["chat"] = answer
    with caplog.at_level(logging.WARNING, logger="vllm_gateway.discovery"):
        await ModelDiscovery(reg).refresh(reg.backends["chat"])
    assert ids(reg) == ["m"] and reg.resolve("m") is not None
    assert any("could not list models of backend 'chat'" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_cards_without_a_string_id_are_ignored(fake) -> None:
    fake.models["chat"] = {"data": [{"id": 5}, "text", {"object": "model"}, card("good")]}
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000"})
    await ModelDiscovery(reg).refresh(reg.backends["chat"])
    assert ids(reg) == ["good"]


# -- health --------------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_health_states_and_refresh_on_becoming_ready(fake) -> None:
    fake.health["chat"] = 200
    fake.models["chat"] = {"data": [card("m")]}
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000"})
    backend = reg.backends["chat"]
    assert backend.state == UNKNOWN and backend.routable
    assert await monitor(reg).check_all() == {"chat": True}
    assert backend.state == READY and backend.last_error is None and fake.calls[("chat", "/v1/models")] == 1
    await monitor(reg).check(backend)
    assert fake.calls[("chat", "/v1/models")] == 1  # still ready: no new listing

    fake.health["chat"] = 503
    assert await monitor(reg).check(backend) is False
    assert backend.state == UNHEALTHY and backend.last_error == "health check answered 503"

    fake.health["chat"] = httpx.ConnectError("refused")
    await monitor(reg).check(backend)
    assert backend.last_error == "health check failed: ConnectError"
    assert "chat:8000" not in backend.last_error

    fake.health["chat"] = 200
    fake.models["chat"] = {"data": [card("m"), card("new-lora", parent="m")]}
    assert await monitor(reg).check(backend) is True
    assert backend.state == READY and fake.calls[("chat", "/v1/models")] == 2 and "new-lora" in ids(reg)


@pytest.mark.anyio
async def test_a_backend_with_replicas_is_up_while_any_replica_is(fake) -> None:
    fake.health.update({"r1": httpx.ConnectError("down"), "r2": 200})
    reg = registry(fake, {"name": "chat", "urls": ["http://r1:1", "http://r2:2"], "models": ["m"]})
    backend = reg.backends["chat"]
    assert await monitor(reg).check(backend) is True and backend.state == READY
    assert [u.healthy for u in backend.upstreams] == [False, True]
    backend.upstreams[1].outstanding = 50
    assert backend.pick() is backend.upstreams[1]  # the healthy one, however busy
    backend.upstreams[0].healthy = True
    assert backend.pick() is backend.upstreams[0]  # least outstanding among healthy


def test_replicas_with_as_many_requests_outstanding_take_turns(fake) -> None:
    reg = registry(fake, {"name": "chat", "urls": ["http://r1:1", "http://r2:2", "http://r3:3"], "models": ["m"]})
    backend = reg.backends["chat"]
    first, second, third = backend.upstreams
    assert [backend.pick() for _ in range(6)] == [first, second, third, first, second, third]
    second.outstanding = 1
    assert [backend.pick() for _ in range(4)] == [first, third, first, third]  # the busier one only when alone
    first.healthy = False
    assert [backend.pick() for _ in range(2)] == [third, third]


def test_a_preferred_address_is_picked_while_healthy_least_busy_among_them(fake) -> None:
    reg = registry(fake, {"name": "chat", "urls": ["http://r1:1", "http://r2:2", "http://r3:3"], "models": ["m"]})
    backend = reg.backends["chat"]
    first, second, third = backend.upstreams
    second.outstanding = 5
    assert [backend.pick((second,)) for _ in range(3)] == [second] * 3  # held there: however busy
    third.outstanding = 6
    assert backend.pick((second, third)) is second
    second.healthy = third.healthy = False
    assert backend.pick((second, third)) is first  # none healthy holds it: least outstanding of all


@pytest.mark.anyio
async def test_configured_adapters_are_listed_loaded_or_not_with_the_base_as_parent(fake) -> None:
    fake.health["chat"] = 200
    fake.models["chat"] = {"data": [card("m"), card("sql", root="/adapters/sql", parent="m"), card("own", parent="m")]}
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000", "models": ["m"], "max_loaded_adapters": 2,
                          "adapters": {"sql": "/adapters/sql", "hub": "hf:org/hub-lora"}})
    before = {c["id"]: c for c in reg.model_cards()}
    assert list(before) == ["m", "sql", "hub"]
    assert before["hub"]["parent"] == "m" and before["hub"]["root"] == "org/hub-lora"
    assert reg.resolve("hub").adapter == "hub" and reg.resolve("m").adapter is None
    await monitor(reg).check_all()  # the backend lists `sql` (loaded) and `own` (loaded by someone else)
    after = {c["id"]: c for c in reg.model_cards()}
    assert list(after) == ["m", "own", "sql", "hub"] and after["sql"] == {**before["sql"], "created": after["sql"]["created"]}
    assert reg.resolve("sql").adapter == "sql" and reg.resolve("own").adapter is None  # not ours to manage


@pytest.mark.parametrize("state", [STARTING, FAILED])
@pytest.mark.anyio
async def test_supervised_states_are_not_probed(fake, state) -> None:
    fake.health["chat"] = 200
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000", "models": ["m"], "launch": {"model": "m"}})
    if state == FAILED:
        reg.backends["chat"].lifecycle.failed("would not start")  # what its supervisor writes
    assert await monitor(reg).check_all() == {"chat": False}
    assert fake.calls[("chat", "/health")] == 0 and reg.backends["chat"].state == state


@pytest.mark.anyio
async def test_status_shape_and_no_secrets(fake) -> None:
    fake.models["chat"] = {"data": [card("m"), card("lora", parent="m")]}
    reg = registry(fake, {"name": "chat", "url": "http://chat:8000", "aliases": ["a"], "api_key": "top-secret"})
    await ModelDiscovery(reg).refresh(reg.backends["chat"])
    status = reg.backends["chat"].status()
    assert {"name", "url", "urls", "state", "models", "aliases", "last_error", "launched"} <= set(status)
    assert status["name"] == "chat" and status["url"] == "http://chat:8000" and status["state"] == UNKNOWN
    assert status["models"] == ["m", "lora"] and status["aliases"] == ["a"] and status["launched"] is False
    assert "top-secret" not in repr(status)


@pytest.mark.anyio
async def test_idle_backend_connections_expire_a_second_before_the_backends_keep_alive() -> None:
    settings = Settings(backends=[{"name": "a", "url": "http://a:1"},
                                  {"name": "b", "url": "http://b:1", "launch": {"model": "m"}}])
    for config, expiry in zip(settings.backends, (4, 59), strict=False):
        upstream = make_upstream(config.all_urls[0], settings, config, None)
        assert upstream.sender.transport.keepalive_expiry == expiry
        await upstream.client.aclose()


@pytest.mark.anyio
async def test_backend_clients_send_the_backend_key_and_ignore_proxy_environment(fake, monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    settings = Settings(backends=[{"name": "a", "url": "http://a:1", "api_key": "k-123"}])
    client = make_upstream("http://a:1", settings, settings.backends[0], httpx.MockTransport(fake)).client
    fake.health["a"] = 200
    assert (await client.get("/health")).status_code == 200
    sent = fake.seen_headers[-1]
    assert sent["authorization"] == "Bearer k-123" and sent["accept-encoding"] == "identity"
    assert client.trust_env is False
    await client.aclose()


@pytest.mark.anyio
async def test_a_backend_without_key_sends_no_authorization(fake) -> None:
    fake.health["a"] = 200
    reg = registry(fake, {"name": "a", "url": "http://a:1"})
    await monitor(reg).check_all()
    assert all("authorization" not in h for h in fake.seen_headers)
    await reg.aclose()
