"""What a forwarded request needs from the gateway, handed down to it as one small object.

The forwarder, each exchange and each realtime session read it; none of them reaches back up
to the object that created it. `draining` is written by the gateway's shutdown alone; `adapters`
is the adapter manager, which loads the LoRA adapter a request names where it goes; `residency` is
the residency manager when some backend is on demand (requests for it wait for its wake).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..adapters.manager import AdapterManager
from ..metrics import GatewayMetrics
from ..settings import Settings
from .affinity import ResponseAffinity
from .deadline import Deadlines

if TYPE_CHECKING:
    from ..residency.manager import ResidencyManager
    from ..ui.activity import Activity


class ForwardingContext:
    __slots__ = ("settings", "retries", "metrics", "affinity", "draining", "adapters", "activity", "residency",
                 "_deadlines")

    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.retries = settings.retries
        self.metrics = metrics
        self.affinity = ResponseAffinity()  # which address holds each stored response
        self.draining = False  # set when the gateway begins to shut down
        self.adapters = AdapterManager(metrics)
        self.activity: Activity | None = None  # the operator page's request list (`ui.activity`), when it is on
        self.residency: ResidencyManager | None = None
        self._deadlines: Deadlines | None = None

    def deadlines(self, loop: asyncio.AbstractEventLoop) -> Deadlines:
        """Every request's timeouts behind one loop timer (`forwarding.deadline`)."""
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:  # tests run one app in several loops
            deadlines = self._deadlines = Deadlines(loop)
        return deadlines

    def begin_shutdown(self) -> None:
        """New requests get 503 from now on; in-flight ones run on for the grace period."""
        self.draining = True


__all__ = ["ForwardingContext"]
