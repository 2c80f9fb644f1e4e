"""The Activity ring: O(1) records on the proxy's path, rows (and stream usage) read when shown."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from vllm_gateway.ui.activity import TAIL_BYTES, Activity, usage_in_stream


@dataclass
class Finished:
    model: str = "m"
    backend_name: str = "b"
    endpoint: str = "/v1/chat/completions"
    status: int = 200
    streaming: bool = False
    request_id: bytes = b"rid-1"
    started: float = 0.0
    first_byte_at: float = 0.0
    usage: Any = None
    tail_prev: bytes = b""
    tail_last: bytes = b""


def stream_tail(usage: dict[str, int] | None) -> bytes:
    chunk = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n' * 50
    if usage is not None:
        chunk += b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n"
    return chunk + b"data: [DONE]\n\n"


def test_a_whole_answer_keeps_its_usage_and_times() -> None:
    activity = Activity(size=10)
    now = time.perf_counter()
    activity.finished(Finished(started=now - 2.0, first_byte_at=now - 0.5,
                               usage={"prompt_tokens": 7, "completion_tokens": 40, "total_tokens": 47}), now)
    (row,) = activity.rows()
    assert row["model"] == "m" and row["backend"] == "b" and row["route"] == "/v1/chat/completions" and row["status"] == 200
    assert row["prompt_tokens"] == 7 and row["completion_tokens"] == 40
    assert row["ttfb_s"] == 1.5 and row["duration_s"] == 2.0
    assert row["tokens_per_s"] == 20.0  # over the whole request when not streamed
    assert row["request_id"] == "rid-1" and row["seq"] == 1 and abs(row["time"] - time.time()) < 5


def test_a_streams_usage_is_read_from_its_last_chunks_and_speed_counts_after_the_first_token() -> None:
    activity = Activity()
    tail = stream_tail({"prompt_tokens": 3, "completion_tokens": 30, "total_tokens": 33})
    # The usage event split over the last two chunks.
    prev, last = tail[:-40], tail[-40:]
    activity.finished(Finished(streaming=True, started=10.0, first_byte_at=11.0, tail_prev=prev, tail_last=last), 13.0)
    (row,) = activity.rows()
    assert row["stream"] and row["prompt_tokens"] == 3 and row["completion_tokens"] == 30
    assert row["tokens_per_s"] == 15.0  # 30 tokens in the 2 s after the first byte


def test_a_stream_without_usage_shows_none_and_keeps_only_a_bounded_tail() -> None:
    activity = Activity()
    big = b"x" * 100_000
    activity.finished(Finished(streaming=True, started=1.0, first_byte_at=1.1, tail_prev=big, tail_last=big), 2.0)
    kept_tail = activity.rows_kept[0][9]
    assert len(kept_tail) == TAIL_BYTES
    (row,) = activity.rows()
    assert row["prompt_tokens"] is None and row["completion_tokens"] is None and row["tokens_per_s"] is None


def test_usage_in_a_responses_api_stream_and_garbage() -> None:
    completed = {"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 9}}}
    assert usage_in_stream(b"event: response.completed\ndata: " + orjson.dumps(completed) + b"\n\n") == \
        {"input_tokens": 5, "output_tokens": 9}
    assert usage_in_stream(b'data: {"usage": null}\n\n') is None
    assert usage_in_stream(b'"usage": {"prompt_tokens": 1}') is None  # no event start
    assert usage_in_stream(b'data: {"usage": {"prompt_tokens": 1}, broken\n\ndata: [DONE]\n\n') is None


def test_the_ring_is_bounded_and_rows_after_a_sequence_are_the_new_ones() -> None:
    activity = Activity(size=5)
    for i in range(12):
        activity.finished(Finished(request_id=f"r{i}".encode(), started=0.0, first_byte_at=0.0), 1.0)
    assert [r["seq"] for r in activity.rows()] == [8, 9, 10, 11, 12]
    assert [r["request_id"] for r in activity.rows(after=10)] == ["r10", "r11"]
    assert activity.rows(after=12) == [] and [r["seq"] for r in activity.rows(after=2)] == [8, 9, 10, 11, 12]


def test_refusals_are_listed_and_count_in_the_backends_minute_but_not_under_no_backend() -> None:
    activity = Activity()
    activity.refused("sim-chat", "chat", "/v1/chat/completions", 503, b"r", time.perf_counter())
    activity.refused("unknown", "none", "/v1/chat/completions", 404, b"r2", time.perf_counter())
    assert [(r["backend"], r["status"]) for r in activity.rows()] == [("chat", 503), ("none", 404)]
    assert activity.traffic.last_minute("chat")["errors_per_s"] > 0
    assert activity.traffic.last_minute("none")["requests_per_s"] == 0.0


def test_recording_a_request_is_cheap() -> None:
    """Printed, not asserted (no timed assertions): the cost the exchange pays per request."""
    activity = Activity()
    exchange = Finished(streaming=True, started=1.0, first_byte_at=1.1, tail_prev=b"a" * 500, tail_last=b"b" * 500)
    rounds = 50_000
    start = time.perf_counter()
    for _ in range(rounds):
        activity.finished(exchange, 2.0)
    took = (time.perf_counter() - start) / rounds
    print(f"\nActivity.finished: {took * 1e6:.2f} µs per request")
    assert len(activity.rows_kept) == 500
