"""The plan as one line (check-config, start-up), as the `plan` table, and as JSON."""

from __future__ import annotations

import json

from tests.unit.planner.published import FIXTURES
from vllm_gateway.planner.plan import build_plan
from vllm_gateway.planner.render import plan_json, plan_line, plan_table
from vllm_gateway.settings import Settings

GB = 10**9
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "/nonexistent"}


def plan(launch: dict, memory: int | None = 48 * GB):
    settings = Settings(backends=[{"name": "guard", "url": "http://127.0.0.1:8000", "launch": launch}])
    return build_plan(settings, default_memory=memory, env=OFFLINE)


def test_a_fitting_fraction_marks_the_figures_that_rest_on_estimates() -> None:
    line = plan_line(plan({"model": str(FIXTURES / "qwen3-8b"), "gpu_memory_utilization": 0.6,
                           "max_model_len": 32768}).backend("guard"))
    assert line.startswith("plan: fits, share 0.6, weights 15.26 GiB, estimates 1.40 GiB, KV ~10.17 GiB = ~74,")
    assert line.endswith("at 144.0 KiB/token, ~2 x 32,768-token sequences at once")


def test_auto_figures_are_exact_and_name_the_flag_passed() -> None:
    line = plan_line(plan({"model": str(FIXTURES / "qwen3-8b"), "gpu_memory_utilization": "auto",
                           "max_model_len": 32768, "concurrent_sequences": 2}).backend("guard"))
    assert "~" not in line and "share 0." in line and "(auto)" in line
    assert f"2 x 32,768-token sequences at once, passes --kv-cache-memory-bytes {2 * 2048 * 2359296}" in line


def test_an_unknown_plan_says_why_and_what_is_known() -> None:
    line = plan_line(plan({"model": str(FIXTURES / "qwen3-8b"), "gpu_memory_utilization": 0.6,
                           "max_model_len": 32768}, memory=None).backend("guard"))
    assert line.startswith("plan: unknown (GPU memory unknown")
    assert "weights 15.26 GiB, KV 144.0 KiB/token (one 32,768-token sequence 4.50 GiB)" in line
    missing = plan_line(plan({"model": "Org/Missing", "gpu_memory_utilization": 0.5}).backend("guard"))
    assert missing.startswith("plan: unknown (model files not readable: Org/Missing") and "share 0.5" in missing


def test_the_table_has_one_row_per_backend_and_the_sum() -> None:
    table = plan_table(plan({"model": str(FIXTURES / "qwen3-8b"), "gpu_memory_utilization": 0.6,
                             "max_model_len": 32768}))
    lines = table.splitlines()
    assert lines[0] == "GPU 0: 44.70 GiB total, budget 0.9 = 40.23 GiB"
    assert lines[1].split() == ["backend", "model", "share", "weights", "KV/token", "KV", "cache", "KV", "tokens",
                                "sequences", "estimates", "status"]
    assert lines[2].split()[0] == "guard" and lines[3].split()[:2] == ["sum", "0.6"]
    assert "26.82 GiB of 40.23 GiB budget" in lines[3]


def test_json_carries_the_figures_and_the_refusals() -> None:
    data = plan_json(plan({"model": str(FIXTURES / "qwen3-8b"), "gpu_memory_utilization": 0.3,
                           "max_model_len": 32768}))
    json.dumps(data)  # serialisable as it is
    (backend,) = data["backends"]
    assert backend["status"] == "does not fit" and backend["missing_bytes"] > 0
    assert data["refusals"] == [f"backend guard: {backend['reason']}"]
    assert {e["name"] for e in backend["estimates"]} >= {"CUDA context", "CUDA graphs"}
