"""Several workers: the shared directory is fresh, counts add up, a stopped worker's gauges go."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.promtool import promtool_findings
from vllm_gateway.metrics.multiprocess import ENV, clear_chosen_dir, worker_metrics_dir

ROOT = Path(__file__).resolve().parents[3]


def test_a_fresh_directory_is_made_for_the_workers_and_removed_after(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with worker_metrics_dir() as path:
        assert os.environ[ENV] == str(path)
        assert path.is_dir() and not any(path.iterdir())
        (path / "counter_123.db").write_bytes(b"x")
    assert not path.exists()
    assert ENV not in os.environ


def test_an_operator_chosen_directory_is_emptied_of_old_files_and_kept(monkeypatch, tmp_path):
    chosen = tmp_path / "prom"
    chosen.mkdir()
    (chosen / "counter_1.db").write_bytes(b"stale")
    (chosen / "gauge_livesum_2.db").write_bytes(b"stale")
    (chosen / "README").write_text("not ours")
    monkeypatch.setenv(ENV, str(chosen))
    with worker_metrics_dir() as path:
        assert path == chosen
        assert sorted(p.name for p in chosen.iterdir()) == ["README"]
    assert chosen.is_dir() and os.environ[ENV] == str(chosen)


def test_nothing_is_cleared_without_a_chosen_directory(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert clear_chosen_dir() is None


def _in_process(directory: Path, code: str) -> str:
    env = {**os.environ, ENV: str(directory), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_workers_counts_are_summed_and_a_released_workers_in_flight_is_dropped(tmp_path):
    worker = """
        from vllm_gateway.metrics import GatewayMetrics
        m = GatewayMetrics()
        m.declare_backends(["chat"])
        r = m.for_request("sim-chat", "chat", "/v1/chat/completions")
        for _ in range({n}):
            r.count(200)
            r.duration.observe(0.2)
        for _ in range({flying}):
            r.in_flight.inc()
        m.upstream_error("chat", "timeout")
        {end}
    """
    _in_process(tmp_path, worker.format(n=3, flying=2, end="m.release()"))  # a worker that shut down
    _in_process(tmp_path, worker.format(n=4, flying=1, end="pass"))  # one still running (its pid is gone too,
    # but only a release says so: uvicorn restarts crashed workers without telling prometheus-client)
    page = _in_process(tmp_path, """
        import sys
        from vllm_gateway.metrics import GatewayMetrics
        sys.stdout.write(GatewayMetrics().exposition().decode())
    """)
    families = {f.name: f.samples for f in text_string_to_metric_families(page)}
    (requests,) = families["gateway_requests"]
    assert requests.value == 7 and requests.labels["status"] == "200"
    count = [s.value for s in families["gateway_request_duration_seconds"] if s.name.endswith("_count")]
    assert count == [7]
    assert [s.value for s in families["gateway_requests_in_flight"]] == [1]
    assert [s.value for s in families["gateway_upstream_errors"]] == [2]
    assert "_created" not in page
    assert promtool_findings(page) == set()
