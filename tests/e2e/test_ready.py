import socket

import httpx

from tests.servers import EMBEDDING, gateway, running, simulator


def test_ready_all_versus_any():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    with running(simulator(["sim-embed"], EMBEDDING)) as sim, gateway(
        {"name": "up", "url": sim.url}, {"name": "down", "url": f"http://127.0.0.1:{dead_port}"},
    ) as gw:
        strict = httpx.get(f"{gw.url}/ready")
        assert strict.status_code == 503 and strict.json()["not_ready"] == ["down"]
        lenient = httpx.get(f"{gw.url}/ready", params={"require": "any"})
        assert lenient.status_code == 200 and lenient.json() == {"ready": True, "backends": ["up"], "not_ready": ["down"]}
        assert httpx.get(f"{gw.url}/ready", params={"require": "most"}).status_code == 400


def test_health_answers_get_and_head():
    with gateway() as gw:
        assert httpx.get(f"{gw.url}/health").json() == {"status": "ok"}
        head = httpx.head(f"{gw.url}/health")
        assert head.status_code == 200 and head.content == b""
