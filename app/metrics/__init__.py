"""Metrics: the gateway's own families, and (in `merge`) the backends' pages folded into one."""

from .gateway import GatewayMetrics, RequestMetrics

__all__ = ["GatewayMetrics", "RequestMetrics"]
