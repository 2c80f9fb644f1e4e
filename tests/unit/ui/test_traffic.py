"""The last minute per backend: rates over the window, percentiles within a bucket, expiry."""

from __future__ import annotations

import pytest

from vllm_gateway.ui.traffic import Traffic


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_and_percentiles_over_the_last_minute() -> None:
    clock = Clock()
    traffic = Traffic(clock)
    clock.now += 120  # the gateway has run for longer than the window
    for i in range(100):
        traffic.add("chat", 0.010 if i < 98 else 2.0, 200 if i < 95 else 503)
    minute = traffic.last_minute("chat")
    assert minute["requests_per_s"] == pytest.approx(100 / 60, abs=0.01)
    assert minute["errors_per_s"] == pytest.approx(5 / 60, abs=0.01)
    assert minute["p50_s"] == pytest.approx(0.010, rel=0.12)
    assert minute["p99_s"] == pytest.approx(2.0, rel=0.12)
    assert minute["window_s"] == 60


def test_a_young_gateway_divides_by_the_time_it_has_run_and_old_seconds_expire() -> None:
    clock = Clock()
    traffic = Traffic(clock)
    clock.now += 10
    for _ in range(20):
        traffic.add("chat", 0.1, 200)
    assert traffic.last_minute("chat")["requests_per_s"] == 2.0
    clock.now += 30
    traffic.add("chat", 1.0, 200)  # another second's slot
    assert traffic.last_minute("chat")["requests_per_s"] == pytest.approx(21 / 40, abs=0.01)
    clock.now += 45  # the first 20 are now older than a minute
    minute = traffic.last_minute("chat")
    assert minute["requests_per_s"] == pytest.approx(1 / 60, abs=0.01)
    assert minute["p50_s"] == pytest.approx(1.0, rel=0.12)
    clock.now += 61
    assert traffic.last_minute("chat")["p99_s"] is None and traffic.last_minute("chat")["requests_per_s"] == 0.0


def test_a_reused_slot_forgets_what_it_held() -> None:
    clock = Clock()
    traffic = Traffic(clock)
    traffic.add("chat", 5.0, 200)
    clock.now += 60  # the same slot, a minute later
    traffic.add("chat", 0.001, 200)
    minute = traffic.last_minute("chat")
    assert minute["p99_s"] == pytest.approx(0.001, rel=0.12)


def test_an_unknown_backend_has_an_empty_minute() -> None:
    assert Traffic().last_minute("nobody") == {"requests_per_s": 0.0, "errors_per_s": 0.0, "p50_s": None, "p99_s": None,
                                                "window_s": 1}
