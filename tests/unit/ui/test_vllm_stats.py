"""vLLM's own figures per backend, from the merged backend part of /metrics."""

from __future__ import annotations

from vllm_gateway.metrics.merge import PageMerger, label_text
from vllm_gateway.simulator.metrics import SimMetrics
from vllm_gateway.ui.vllm_stats import EngineStats


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def merged(pages: dict[str, str]) -> str:
    merger = PageMerger()
    for name, page in pages.items():
        merger.add(page, label_text(name))
    return merger.text()


def test_rates_kv_use_and_sleep_state_from_the_simulators_real_page() -> None:
    chat = SimMetrics("sim-chat")
    clock = Clock()
    stats = EngineStats(clock)
    chat.generation.inc(100)
    chat.kv.set(0.25)
    chat.running.set(3)
    stats.update(merged({"chat": chat.page().decode()}))
    first = stats.of("chat")
    assert first is not None and first["generation_tokens_per_s"] is None  # one reading: no rate yet
    assert first["kv_cache_usage"] == 0.25 and first["running"] == 3 and first["sleep_state"] == "awake"
    clock.now += 2
    chat.generation.inc(50)
    chat.prompt.inc(10)
    stats.update(merged({"chat": chat.page().decode()}))
    second = stats.of("chat")
    assert second["generation_tokens_per_s"] == 25.0 and second["prompt_tokens_per_s"] == 5.0
    assert stats.of("embed") is None


def test_a_restart_starts_the_count_over_and_an_unscraped_backend_has_no_figures() -> None:
    clock = Clock()
    stats = EngineStats(clock)
    page = 'vllm:generation_tokens_total{backend="chat",engine="0",model_name="m"} 1000.0\n'
    stats.update(page)
    clock.now += 1
    stats.update('vllm:generation_tokens_total{backend="chat",engine="0",model_name="m"} 40.0\n'
                 'vllm:gpu_cache_usage_perc{backend="chat",engine="0",model_name="m"} 0.5\n'
                 'vllm:engine_sleep_state{backend="chat",engine="0",model_name="m",sleep_state="awake"} 0.0\n'
                 'vllm:engine_sleep_state{backend="chat",engine="0",model_name="m",sleep_state="weights_offloaded"} 1.0\n')
    figures = stats.of("chat")
    assert figures["generation_tokens_per_s"] == 40.0 and figures["kv_cache_usage"] == 0.5  # vLLM before 0.11's name
    assert figures["sleep_state"] == "asleep (level 1)"
    stats.update("")
    assert stats.of("chat") is None


def test_replicas_add_up_and_the_fullest_cache_counts() -> None:
    stats = EngineStats(Clock())
    stats.update('vllm:num_requests_running{backend="chat",replica="a:1",engine="0"} 2\n'
                 'vllm:num_requests_running{backend="chat",replica="b:1",engine="0"} 3\n'
                 'vllm:kv_cache_usage_perc{backend="chat",replica="a:1",engine="0"} 0.2\n'
                 'vllm:kv_cache_usage_perc{backend="chat",replica="b:1",engine="0"} 0.7\n'
                 'vllm:num_requests_running{exported_backend="x",backend="other",engine="0"} 1\n')
    assert stats.of("chat")["running"] == 5 and stats.of("chat")["kv_cache_usage"] == 0.7
    assert stats.of("other")["running"] == 1 and stats.of("x") is None
