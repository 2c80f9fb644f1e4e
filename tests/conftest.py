from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# The planner reads model files from the Hugging Face cache, or from the hub when online; the
# tests' model names are not on the hub and these machines do not reach it: never ask.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.servers import CHAT, EMBEDDING, Running, gateway, running, simulator


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (`@pytest.mark.anyio`) run on asyncio, the loop the gateway serves on."""
    return "asyncio"


@pytest.fixture
def chat_backend() -> Iterator[Running]:
    with running(simulator(["sim-chat"], CHAT, token_delay=0.0)) as sim:
        yield sim


@pytest.fixture
def embed_backend() -> Iterator[Running]:
    with running(simulator(["sim-embed"], EMBEDDING)) as sim:
        yield sim


@pytest.fixture
def two_backends(chat_backend: Running, embed_backend: Running) -> Iterator[tuple[Running, Running, Running]]:
    """A gateway in front of a chat and an embedding simulator: (gateway, chat, embed)."""
    with gateway(
        {"name": "chat", "url": chat_backend.url, "aliases": ["gpt-4o-mini"]},
        {"name": "embed", "url": embed_backend.url, "aliases": ["text-embedding-3-small"]},
    ) as gw:
        yield gw, chat_backend, embed_backend
