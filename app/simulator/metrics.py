"""The simulator's `/metrics`: vLLM's `vllm:*` families with vLLM's names, labels and buckets.

Each simulator has its own registry, so several in one process (the tests) never mix their counts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
SLEEP_OPERATION_BUCKETS = (0.01, 0.1, 1, 10, 30, 60, 120, 300, 600)
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()


class SimMetrics:
    def __init__(self, model: str, max_loras: int | None = None) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        labels = ["model_name", "engine"]
        key = self.key = (model, "0")
        self.running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                             labels, registry=r).labels(*key)
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                             labels, registry=r).labels(*key)
        sleep_state = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
            "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            labels + ["sleep_state"], registry=r)
        self.sleep_state = {s: sleep_state.labels(*key, s) for s in SLEEP_STATES}
        self.record_sleep_state(asleep=False, level=0)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels,
                        registry=r).labels(*key)
        self.prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels,
                              registry=r).labels(*key)
        self.generation = Counter("vllm:generation_tokens", "Number of generation tokens processed.", labels,
                                  registry=r).labels(*key)
        self.success = Counter("vllm:request_success", "Count of successfully processed requests.",
                               labels + ["finished_reason"], registry=r)
        for reason in ("stop", "length", "abort", "error", "repetition"):
            self.success.labels(*key, reason)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              labels, registry=r,
                              buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                                       2.5, 5.0, 10.0)).labels(*key)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             labels, registry=r,
                             buckets=(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)).labels(*key)
        self.iteration = Histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                                   labels, registry=r, buckets=(1, 8, 16, 32, 64, 128, 256, 512)).labels(*key)
        cache = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", ["block_size", "engine"],
                      registry=r)
        cache.labels("16", "0").set(1)
        self.http = Counter("http_requests", "Total number of requests by method, status and handler.",
                            ["handler", "method", "status"], registry=r)
        self.max_loras = max_loras
        self.lora_info = None if max_loras is None else Gauge(
            "vllm:lora_requests_info", "Running stats on lora requests.",
            ["max_lora", "waiting_lora_adapters", "running_lora_adapters"], registry=r)
        self._sleep_duration: Histogram | None = None  # vLLM creates these on the first sleep-mode call
        self._sleep_in_flight: Gauge | None = None

    def page(self) -> bytes:
        return generate_latest(self.registry)

    def count_tokens(self, prompt_tokens: int, completion_tokens: int, started: float, reason: str) -> None:
        self.prompt.inc(prompt_tokens)
        self.generation.inc(completion_tokens)
        self.success.labels(*self.key, reason).inc()
        self.e2e.observe(time.perf_counter() - started)
        self.iteration.observe(prompt_tokens + completion_tokens)

    def record_sleep_state(self, asleep: bool, level: int) -> None:
        """vLLM's `record_sleep_state`: awake 1/0; level 1 sets weights_offloaded, level 2 discard_all."""
        values = {"awake": 0 if asleep else 1, "weights_offloaded": int(asleep and level == 1),
                  "discard_all": int(asleep and level == 2)}
        for state, value in values.items():
            self.sleep_state[state].set(value)

    @contextlib.contextmanager
    def sleep_operation(self, operation: str) -> Iterator[None]:
        """vLLM's `sleep_mode_operation_metrics().record(...)` around /sleep, /wake_up and
        /release_kv_cache_memory: in flight while it runs, its duration observed even when it fails."""
        if self._sleep_duration is None or self._sleep_in_flight is None:
            self._sleep_duration = Histogram("vllm:sleep_mode_operation_duration_seconds",
                                             "Duration of one sleep-mode operation.", ["operation"],
                                             buckets=SLEEP_OPERATION_BUCKETS, registry=self.registry)
            self._sleep_in_flight = Gauge("vllm:sleep_mode_operations_in_flight",
                                          "Sleep-mode operations currently awaited.", ["operation"],
                                          registry=self.registry)
        active = self._sleep_in_flight.labels(operation)
        started = time.perf_counter()
        active.inc()
        try:
            yield
        finally:
            active.dec()
            self._sleep_duration.labels(operation).observe(time.perf_counter() - started)

    def record_lora_requests(self, adapters: Iterable[str]) -> None:
        """A scheduler step's `vllm:lora_requests_info` sample: set to the time, labelled by adapter names."""
        if self.lora_info is not None:
            names = ",".join(adapters)
            self.lora_info.labels(str(self.max_loras), names, names).set_to_current_time()
