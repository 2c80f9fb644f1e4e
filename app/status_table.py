"""`vllm-gateway status`: the gateway's `/status` document as a table, for a terminal over SSH.

It prints what the operator page shows at the top (GPUs, backends with their traffic and vLLM
figures, last errors in full), from the same data model.
"""

from __future__ import annotations

from typing import Any

import httpx

GIB = 1024**3


class StatusUnavailable(Exception):
    """The gateway could not be asked, or refused; the message says what to do."""


def fetch_status(url: str, key: str | None, timeout: float = 10.0) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/status", params={"engine": "true"}, headers=headers, timeout=timeout,
                             trust_env=False)
    except httpx.HTTPError as exc:
        raise StatusUnavailable(f"cannot reach {url}: {exc or type(exc).__name__}; is the gateway running there? "
                                f"(--url, or VLLM_GATEWAY_URL)") from None
    if response.status_code == 401:
        raise StatusUnavailable(f"{url} wants a key: put a client key (api_keys) or the admin or metrics key in "
                                f"VLLM_GATEWAY_KEY (or --key-env NAME)")
    if response.status_code != 200:
        raise StatusUnavailable(f"{url}/status answered {response.status_code}: {response.text[:200]}")
    try:
        data: dict[str, Any] = response.json()
    except ValueError:
        raise StatusUnavailable(f"{url}/status did not answer JSON: is this a vllm-gateway?") from None
    return data


def _bytes(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.1f}G"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.0f}s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def shown_state(backend: dict[str, Any]) -> str:
    residency = backend.get("residency")
    if backend.get("state") == "ready" and isinstance(residency, dict) and isinstance(residency.get("state"), str):
        return f"ready/{residency['state']}"
    return str(backend.get("state"))


def render_status(document: dict[str, Any], width: int = 60) -> str:
    lines = [f"vllm-gateway {document.get('version')} (status schema {document.get('schema_version', '?')})"
             + (" - SHUTTING DOWN" if document.get("shutting_down") else "")]
    gpus = document.get("gpus")
    if gpus is None:
        lines.append("GPUs: no NVML here (GPU memory is not read); planned shares only")
    for gpu in gpus or []:
        held = ", ".join(f"{name} {_bytes(n)}" for name, n in sorted(gpu.get("by_backend", {}).items())) or "no backend"
        busy = gpu.get("utilization")
        lines.append(f"GPU {gpu['index']} {gpu['name']}: {_bytes(gpu['used_bytes'])} of {_bytes(gpu['total_bytes'])} used"
                     + (f", {busy * 100:.0f}% busy" if busy is not None else "") + f"; held: {held}")
    header = ["BACKEND", "STATE", "MODELS", "UPTIME", "RESTARTS", "INFLIGHT/WAIT", "REQ/S", "P50/P99", "GEN TOK/S", "KV",
              "SHARE", "LAST ERROR"]
    rows = [header]
    errors = []
    for b in document.get("backends", []):
        traffic = b.get("traffic") or {}
        engine = b.get("engine") or {}
        memory = b.get("memory") or {}
        kv = engine.get("kv_cache_usage")
        error = b.get("last_error") or ""
        if error:
            errors.append((b["name"], error))
        first = error.splitlines()[0] if error else "-"
        rows.append([
            b["name"], shown_state(b), ",".join(b.get("models") or []) or "-",
            _duration(b.get("uptime_s")) if b.get("launched") else "external",
            str(b.get("restarts", 0)) if b.get("launched") else "-",
            f"{traffic.get('in_flight', '-')}/{traffic.get('waiting', '-')}", _num(traffic.get("requests_per_s"), 2),
            f"{_ms(traffic.get('p50_s'))}/{_ms(traffic.get('p99_s'))}", _num(engine.get("generation_tokens_per_s")),
            "-" if kv is None else f"{kv * 100:.0f}%", _num(memory.get("share"), 2) if memory.get("share") is not None else "-",
            first if len(first) <= width else first[: width - 1] + "…",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines.append("")
    lines.extend("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)
    for name, error in errors:
        lines.append("")
        lines.append(f"last error of {name}:")
        lines.extend(f"  {line}" for line in error.splitlines())
    return "\n".join(lines)


__all__ = ["StatusUnavailable", "fetch_status", "render_status", "shown_state"]
