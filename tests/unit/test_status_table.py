"""`vllm-gateway status`'s table, from a /status document."""

from __future__ import annotations

from vllm_gateway.status_table import render_status


def test_the_table_shows_gpus_backends_and_last_errors_in_full() -> None:
    document = {"schema_version": 1, "version": "0.1.0", "shutting_down": False, "gpus": [
        {"index": 0, "name": "NVIDIA L40S", "total_bytes": 48 * 1024**3, "used_bytes": 30 * 1024**3, "utilization": 0.5,
         "by_backend": {"guard": 26 * 1024**3}, "foreign": []}],
        "backends": [
            {"name": "guard", "state": "ready", "models": ["Qwen/Qwen3Guard-Gen-8B"], "launched": True, "uptime_s": 3725,
             "restarts": 2, "traffic": {"in_flight": 3, "waiting": 1, "requests_per_s": 4.5, "p50_s": 0.2, "p99_s": 1.5},
             "engine": {"generation_tokens_per_s": 812.4, "kv_cache_usage": 0.42}, "memory": {"share": 0.6},
             "residency": {"state": "awake"}, "last_error": None},
            {"name": "ext", "state": "unhealthy", "models": [], "launched": False, "traffic": {},
             "last_error": "health check answered 503\nsecond line"},
        ]}
    text = render_status(document)
    assert "GPU 0 NVIDIA L40S: 30.0G of 48.0G used, 50% busy; held: guard 26.0G" in text
    guard = next(line for line in text.splitlines() if line.startswith("guard"))
    assert guard.split() == ["guard", "ready/awake", "Qwen/Qwen3Guard-Gen-8B", "1h02m", "2", "3/1", "4.50", "200ms/1500ms",
                             "812.4", "42%", "0.60", "-"]
    ext = next(line for line in text.splitlines() if line.startswith("ext"))
    assert ext.split()[:4] == ["ext", "unhealthy", "-", "external"] and ext.endswith("health check answered 503")
    assert text.endswith("last error of ext:\n  health check answered 503\n  second line")
    assert "no NVML" in render_status({"gpus": None, "backends": []})
