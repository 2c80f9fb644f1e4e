"""The backends and the model table: which backend serves a model name, and under what name.

The table is rebuilt from the configuration and the backends' own `/v1/models` cards whenever
either changes (`routing.discovery`); resolving a name is a dictionary lookup with no I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ..settings import Settings
from .backend import Backend, make_backend

log = logging.getLogger("vllm_gateway.registry")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a model name goes: its backend, the name to put in the body (None: unchanged), and
    the configured adapter it names, which must be loaded where the request goes (`adapters`)."""

    backend: Backend
    upstream_model: str | None
    adapter: str | None = None


class Registry:
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.backends: dict[str, Backend] = {c.name: make_backend(c, settings, transport) for c in settings.backends}
        self._table: dict[str, Target] = {}
        self._cards: list[dict[str, Any]] = []
        self.rebuild()

    def resolve(self, name: str) -> Target | None:
        return self._table.get(name)

    def model_names(self) -> list[str]:
        return list(self._table)

    def model_cards(self) -> list[dict[str, Any]]:
        return self._cards

    @property
    def launched(self) -> list[Backend]:
        return [b for b in self.backends.values() if b.launched]

    def rebuild(self) -> None:
        table: dict[str, Target] = {}
        cards: list[dict[str, Any]] = []
        for backend in self.backends.values():
            canonical = backend.canonical_model
            own: dict[str, dict[str, Any]] = {c["id"]: c for c in backend.cards if isinstance(c.get("id"), str)}
            for name in backend.config.models:
                own.setdefault(name, placeholder_card(name))
            launch = backend.config.launch
            if launch is not None and not backend.config.models:
                own.setdefault(launch.model, placeholder_card(launch.model))
            configured = backend.adapters.specs if backend.adapters is not None else {}
            for name, card in own.items():
                if name in configured:
                    continue  # listed below, loaded or not
                if name in table:
                    if table[name].backend is not backend:
                        log.warning("model %r is served by %r and %r; routing it to %r",
                                    name, table[name].backend.name, backend.name, table[name].backend.name)
                    continue
                table[name] = Target(backend, None)
                cards.append(card)
            for alias in backend.config.aliases:
                if alias in table:
                    continue
                table[alias] = Target(backend, canonical)
                base = own.get(canonical) if canonical else None
                card = dict(base) if base else placeholder_card(alias)
                card["id"] = alias
                cards.append(card)
            adapters = backend.adapters
            if adapters is not None:  # every configured adapter, loaded or not, as vLLM lists its own
                for name, spec in adapters.specs.items():
                    table[name] = Target(backend, None, name)
                    cards.append(adapter_card(name, spec.lora_path, canonical))
        self._table = table
        self._cards = cards

    async def aclose(self) -> None:
        await asyncio.gather(*(u.client.aclose() for b in self.backends.values() for u in b.upstreams))


def placeholder_card(name: str) -> dict[str, Any]:
    """A card for a configured name whose backend has not reported it (yet)."""
    return {
        "id": name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": None,
        "parent": None,
        "max_model_len": None,
    }


def adapter_card(name: str, root: str, parent: str | None) -> dict[str, Any]:
    """A configured adapter's card, the same whether it is loaded now or not."""
    return {**placeholder_card(name), "root": root, "parent": parent}


__all__ = ["Registry", "Target", "adapter_card", "placeholder_card"]
