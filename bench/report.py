"""Medians, gateway/direct ratios and the issue's targets, as one table and one JSON document."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any


def median(runs: list[dict], key: str | Callable[[dict], float | None]) -> float | None:
    pick = key if callable(key) else (lambda r: r.get(key))
    values = [v for v in (pick(r) for r in runs) if v is not None]
    return statistics.median(values) if values else None


def _stream_stat(part: str, stat: str) -> Callable[[dict], float | None]:
    return lambda r: r.get(part, {}).get(stat)


class Row:
    __slots__ = ("metric", "direct", "gateway", "relation", "target", "ok")

    def __init__(self, metric: str, direct: float | None, gateway: float | None, relation: str = "",
                 target: str = "", ok: bool | None = None) -> None:
        self.metric, self.direct, self.gateway = metric, direct, gateway
        self.relation, self.target, self.ok = relation, target, ok


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(direct: float | None, gateway: float | None) -> float | None:
    if direct is None or gateway is None or direct == 0:
        return None
    return gateway / direct


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    loads = results.get("loads", {})
    for name, label, floor in (("small_c64", "small body c=64", 4000), ("large_c64", "200 KB body c=64", 1500)):
        runs = loads.get(name)
        if not runs:
            continue
        d, g = median(runs["direct"], "rps"), median(runs["gateway"], "rps")
        ratio = _ratio(d, g)
        out.append(Row(f"{label}: req/s", d, g, f"{ratio:.2f}x" if ratio else "", f">= {floor:,}", _at_least(g, floor)))
        cpu = median(runs["gateway"], "cpu_us_per_request")
        if name == "small_c64":
            out.append(Row(f"{label}: gateway CPU us/request", None, cpu, "", "<= 250", _at_most(cpu, 250)))
        else:
            out.append(Row(f"{label}: gateway CPU us/request", None, cpu))
        out.append(Row(f"{label}: gateway core busy (share)", None, median(runs["gateway"], "cpu_share")))
    runs = loads.get("small_c1")
    if runs:
        for stat, limit in (("p50_ms", 0.3), ("p99_ms", 1.0)):
            d, g = median(runs["direct"], stat), median(runs["gateway"], stat)
            added = None if d is None or g is None else g - d
            out.append(Row(f"c=1 latency {stat[:3]} (ms)", d, g, f"+{added:.3f} ms" if added is not None else "",
                           f"added <= {limit} ms", _at_most(added, limit)))
        out.append(Row("c=1 gateway CPU us/request", None, median(runs["gateway"], "cpu_us_per_request")))
    streams = results.get("streams", {})
    for count, runs in sorted(streams.items(), key=lambda kv: int(kv[0])):
        label = f"{count} streams"
        worst = min((r["completed"] for r in runs["gateway"]), default=None)
        out.append(Row(f"{label}: completed (worst run)", min((r["completed"] for r in runs["direct"]), default=None),
                       worst, "", f"all {count}", None if worst is None else worst == int(count)))
        if int(count) == 2000:
            continue
        for part, stat, limit in (("first_byte", "p50_ms", None), ("first_byte", "p99_ms", 1.5),
                                  ("whole", "p50_ms", 1.05), ("whole", "p99_ms", None)):
            d = median(runs["direct"], _stream_stat(part, stat))
            g = median(runs["gateway"], _stream_stat(part, stat))
            ratio = _ratio(d, g)
            name = "first byte" if part == "first_byte" else "whole stream"
            out.append(Row(f"{label}: {name} {stat[:3]} (ms)", d, g, f"{ratio:.2f}x" if ratio else "",
                           f"<= {limit}x direct" if limit else "", _at_most(ratio, limit) if limit else None))
        out.append(Row(f"{label}: gateway CPU us/stream", None, median(runs["gateway"], "cpu_us_per_stream")))
        rss = max((r.get("rss_peak_mb", 0) for r in runs["gateway"]), default=None)
        out.append(Row(f"{label}: gateway RSS peak (MB)", None, rss, "", "<= 150", _at_most(rss, 150)))
    cold = results.get("streams_cold")
    if cold and cold["runs"]:
        count = cold["runs"][0]["count"]
        label = f"{count} streams after {cold['idle_s']:g} s idle (new backend connections)"
        d = median(streams.get(str(count), {}).get("direct", []), _stream_stat("first_byte", "p99_ms"))
        g = median(cold["runs"], _stream_stat("first_byte", "p99_ms"))
        ratio = _ratio(d, g)
        out.append(Row(f"{label}: first byte p99 (ms)", d, g, f"{ratio:.2f}x" if ratio else ""))
        out.append(Row(f"{label}: gateway CPU us/stream", None, median(cold["runs"], "cpu_us_per_stream")))
    idle = results.get("rss_idle_mb")
    if idle is not None:
        out.append(Row("gateway RSS idle (MB)", None, idle, "", "<= 80", _at_most(idle, 80)))
    workers = results.get("workers", {})
    base = median(workers.get("1", []), "rps")
    for count, runs in sorted(workers.items(), key=lambda kv: int(kv[0])):
        if count == "1":
            continue
        g = median(runs, "rps")
        ratio = _ratio(base, g)
        out.append(Row(f"--workers {count}, small c=64: req/s (*)", base, g,
                       f"{ratio:.2f}x of 1 worker" if ratio else "", f"~{count}x", None))
        out.append(Row(f"--workers {count}: CPU us/request (all workers)", median(workers.get("1", []), "cpu_us_per_request"),
                       median(runs, "cpu_us_per_request")))
    return out


def table(results: dict[str, Any]) -> str:
    header = ("metric", "direct", "gateway", "gw vs direct", "target", "")
    lines = [header]
    for row in rows(results):
        mark = "" if row.ok is None else ("PASS" if row.ok else "MISS")
        lines.append((row.metric, _fmt(row.direct), _fmt(row.gateway), row.relation, row.target, mark))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = []
    for index, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [cell.rjust(widths[i]) for i, cell in enumerate(line[1:], 1)]
        rendered.append(" | ".join(cells).rstrip())
        if index == 0:
            rendered.append("-+-".join("-" * w for w in widths))
    if results.get("workers_note"):
        rendered.append(f"(*) 'direct' column: one worker; {results['workers_note']}")
    return "\n".join(rendered)


def checks(results: dict[str, Any]) -> dict[str, bool]:
    return {row.metric: row.ok for row in rows(results) if row.ok is not None}
