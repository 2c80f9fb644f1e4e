"""`metrics.py`: the `/metrics` page's `vllm:*` families, names and labels."""

from __future__ import annotations

import asyncio
import re

from vllm_gateway.simulator import Simulator, SimulatorConfig

from .replay import CHAT_SIM, Sample, send


def page(sim: Simulator) -> str:
    return asyncio.run(send(sim, Sample.request("GET", "/metrics"))).text


def test_metrics_page_has_vllm_names_and_labels() -> None:
    text = page(Simulator(SimulatorConfig(**CHAT_SIM)))
    for family in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                   "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
                   "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket"):
        assert re.search(rf'^{re.escape(family)}\{{.*model_name="tiny-chat"', text, re.MULTILINE), family
    assert 'engine="0"' in text
