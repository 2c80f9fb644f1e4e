"""The gateway's own Prometheus families, each prefixed `gateway_`.

Labelled children are looked up once per (model, backend, endpoint) and cached, so recording a
request costs a few attribute calls, not a label lookup under a lock.

With several uvicorn workers (`PROMETHEUS_MULTIPROC_DIR` set before the workers start, see
`metrics.multiprocess`) every worker writes its values to files in that directory and
`exposition()` reads all of them: counters and histograms are summed over workers,
`gateway_requests_in_flight` is summed over live workers, and `gateway_backend_up` is the value
most recently written by any live worker (the one rendering the page writes it just before).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, generate_latest, multiprocess

# An adapter load: milliseconds from local disk on CPU, up to minutes for a hub download.
ADAPTER_LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# From 5 ms to several minutes: LLM requests span four orders of magnitude.
# A wake: from a fraction of a second (level 1, small model) to minutes (a restart of a large one).
WAKE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
UNKNOWN_MODEL = "unknown"
NO_BACKEND = "none"


class RequestMetrics:
    """The children one (model, backend, endpoint) combination records into."""

    __slots__ = ("_requests", "_statuses", "_key", "duration", "ttfb", "in_flight", "disconnects")

    def __init__(self, metrics: GatewayMetrics, model: str, backend: str, endpoint: str) -> None:
        self._requests = metrics.requests
        self._statuses: dict[int, Counter] = {}
        self.duration = metrics.request_duration.labels(model, endpoint)
        self.ttfb = metrics.time_to_first_byte.labels(model, endpoint)
        self.in_flight = metrics.in_flight.labels(model, backend)
        self.disconnects = metrics.client_disconnects.labels(model)
        self._key = (model, backend, endpoint)

    @property
    def model(self) -> str:
        return self._key[0]

    def count(self, status: int) -> None:
        child = self._statuses.get(status)
        if child is None:
            child = self._statuses[status] = self._requests.labels(*self._key, str(status))
        child.inc()


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests answered by the gateway, by model, backend, route and HTTP status.",
            ["model", "backend", "endpoint", "status"], registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "Time from request start to the last byte sent to the client.",
            ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.time_to_first_byte = Histogram(
            "gateway_time_to_first_byte_seconds",
            "Time from request start to the first response body byte (time to first token for streams).",
            ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Requests being forwarded right now.",
            ["model", "backend"], registry=r, multiprocess_mode="livesum",
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Failures talking to a backend, by kind (connect, timeout, disconnect, status_5xx, ...).",
            ["backend", "kind"], registry=r,
        )
        self.backend_up = Gauge(
            "gateway_backend_up", "1 when the backend is ready to serve, else 0.",
            ["backend"], registry=r, multiprocess_mode="livemostrecent",
        )
        self.backend_restarts = Counter(
            "gateway_backend_restarts", "Times the gateway restarted a backend process it launched.",
            ["backend"], registry=r,
        )
        self.client_disconnects = Counter(
            "gateway_client_disconnects", "Requests whose client went away before the response was complete.",
            ["model"], registry=r,
        )
        self.backend_scrape_errors = Counter(
            "gateway_backend_scrape_errors",
            "Times a backend's /metrics page could not be read (no answer within metrics_scrape_timeout, "
            "error status, or an unreadable page); its vllm:* series are then absent from this page.",
            ["backend"], registry=r,
        )
        self.adapter_loads = Counter(
            "gateway_adapter_loads", "LoRA adapters the gateway loaded into a backend (on first use, again after an "
            "unload or a restart).", ["backend", "adapter"], registry=r,
        )
        self.adapter_load_failures = Counter(
            "gateway_adapter_load_failures", "Adapter loads the backend refused (bad path, rank, base model); each "
            "is remembered for a while, not retried per request.", ["backend", "adapter"], registry=r,
        )
        self.adapter_unloads = Counter(
            "gateway_adapter_unloads", "Adapters the gateway unloaded to make room (least recently used, idle).",
            ["backend", "adapter"], registry=r,
        )
        self.adapter_load_duration = Histogram(
            "gateway_adapter_load_duration_seconds", "Time a backend took to load an adapter (POST /v1/load_lora_adapter).",
            ["backend"], buckets=ADAPTER_LOAD_BUCKETS, registry=r,
        )
        self.adapters_loaded = Gauge(
            "gateway_adapters_loaded", "Adapters loaded on the backend now (over all its addresses; --lora-modules "
            "ones included).", ["backend"], registry=r, multiprocess_mode="livemostrecent",
        )
        self.backend_awake = Gauge(
            "gateway_backend_awake",
            "On-demand backends: 1 while it holds its GPU memory (awake, waking, going to sleep), 0 while asleep.",
            ["backend"], registry=r, multiprocess_mode="livemostrecent",
        )
        self.backend_swaps = Counter(
            "gateway_backend_swaps", "Completed sleeps and wakes of an on-demand backend, by direction (sleep, wake).",
            ["backend", "direction"], registry=r,
        )
        self.backend_wake = Histogram(
            "gateway_backend_wake_seconds", "Time an on-demand backend took to wake (warm-up included).",
            ["backend"], buckets=WAKE_BUCKETS, registry=r,
        )
        self.request_wait = Histogram(
            "gateway_request_wait_seconds",
            "Time a request waited before it was forwarded, by reason (wake: its backend was asleep).",
            ["reason"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self._children: dict[tuple[str, str, str], RequestMetrics] = {}
        self._errors: dict[tuple[str, str], Counter] = {}
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._source: CollectorRegistry = self.registry
        if self.multiprocess_dir:
            self._source = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(self._source, self.multiprocess_dir)

    def for_request(self, model: str, backend: str, endpoint: str) -> RequestMetrics:
        key = (model, backend, endpoint)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = RequestMetrics(self, model, backend, endpoint)
        return children

    def upstream_error(self, backend: str, kind: str) -> None:
        child = self._errors.get((backend, kind))
        if child is None:
            child = self._errors[(backend, kind)] = self.upstream_errors.labels(backend, kind)
        child.inc()

    def scrape_error(self, backend: str) -> None:
        self.backend_scrape_errors.labels(backend).inc()

    def declare_backends(self, names: list[str], error_kinds: tuple[str, ...] = ()) -> None:
        """Create every per-backend series at start-up, so dashboards see zeros rather than gaps
        (and error-ratio alerts can fire on a fresh gateway)."""
        for name in names:
            self.backend_up.labels(name).set(0)
            self.backend_restarts.labels(name)
            self.backend_scrape_errors.labels(name)
            for kind in error_kinds:
                self._errors[(name, kind)] = self.upstream_errors.labels(name, kind)

    def declare_adapters(self, backend: str, adapters: list[str], pinned: int = 0) -> None:
        """The adapter series of a backend with adapters, at zero from start-up like the others."""
        for name in adapters:
            self.adapter_loads.labels(backend, name)
            self.adapter_load_failures.labels(backend, name)
            self.adapter_unloads.labels(backend, name)
        self.adapter_load_duration.labels(backend)
        self.adapters_loaded.labels(backend).set(pinned)

    def adapter_loaded(self, backend: str, adapter: str, seconds: float) -> None:
        self.adapter_loads.labels(backend, adapter).inc()
        self.adapter_load_duration.labels(backend).observe(seconds)

    def adapter_load_failed(self, backend: str, adapter: str) -> None:
        self.adapter_load_failures.labels(backend, adapter).inc()

    def adapter_unloaded(self, backend: str, adapter: str) -> None:
        self.adapter_unloads.labels(backend, adapter).inc()

    def declare_on_demand(self, names: list[str]) -> None:
        """The residency series at zero from start-up (`residency.manager` writes them)."""
        for name in names:
            self.backend_awake.labels(name).set(0)
            for direction in ("sleep", "wake"):
                self.backend_swaps.labels(name, direction)
            self.backend_wake.labels(name)
        if names:
            self.request_wait.labels("wake")

    def exposition(self) -> bytes:
        """The gateway's own families in the text format, summed over workers when there are several."""
        return generate_latest(_WithoutCreated(self._source))

    def release(self) -> None:
        """At worker shutdown: drop this process's live gauges so they stop counting."""
        if self.multiprocess_dir:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)


class _WithoutCreated:
    """A collector view without `_created` samples: single-process prometheus-client writes them
    as extra gauge families, multiprocess mode does not; without them the page has one shape (and
    half the series) whatever the worker count. See `metrics.merge` for the backends' ones."""

    __slots__ = ("source",)

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            if family.samples:
                yield family
