"""The gateway's own families (`metrics.gateway`): series that exist before anything happened."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from vllm_gateway.forwarding.failures import KINDS
from vllm_gateway.metrics import GatewayMetrics


def test_a_fresh_gateway_has_every_upstream_error_kind_at_zero_for_every_backend() -> None:
    metrics = GatewayMetrics()
    metrics.declare_backends(["chat", "embed"], KINDS)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    samples = {(s.labels["backend"], s.labels["kind"]): s.value for s in families["gateway_upstream_errors"].samples}
    assert samples == {(backend, kind): 0.0 for backend in ("chat", "embed") for kind in KINDS}
    assert {"connect", "connect_timeout", "timeout", "protocol", "status_5xx", "invalid_response", "disconnect",
            "stream_timeout"} == set(KINDS)
    metrics.upstream_error("chat", "connect")
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    counted = {(s.labels["backend"], s.labels["kind"]): s.value for s in families["gateway_upstream_errors"].samples}
    assert counted[("chat", "connect")] == 1.0 and counted[("embed", "connect")] == 0.0
