"""The operator page's parts, built once per gateway and started for the app's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..settings import Settings
from .activity import Activity
from .feed import LiveFeed
from .logs import GatewayLogHandler, LogBook, attach, detach
from .timeline import Timeline
from .vllm_stats import EngineStats


class OperatorPage:
    def __init__(self, settings: Settings) -> None:
        self.activity = Activity(settings.ui.activity)
        self.logs = LogBook(settings.ui.log_lines)
        self.timeline = Timeline()
        self.engine = EngineStats()
        self.feed: LiveFeed | None = None
        self._handler: GatewayLogHandler | None = None
        self._ticker: asyncio.Task[None] | None = None

    def bind(self, state: Any) -> LiveFeed:
        """The feed reads the app's state (`api.status.status_document`)."""
        self.feed = LiveFeed(state, self.activity, self.logs, self.timeline, self.engine)
        return self.feed

    def start(self) -> None:
        assert self.feed is not None
        self._handler = attach(self.logs)
        self._ticker = asyncio.create_task(self.feed.run(), name="ui-ticker")

    async def stop(self) -> None:
        if self.feed is not None:
            self.feed.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._handler is not None:
            detach(self._handler)
            self._handler = None


__all__ = ["OperatorPage"]
