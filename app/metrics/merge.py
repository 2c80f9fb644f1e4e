"""Folding the backends' `/metrics` pages into one valid page, each sample labelled by backend.

Why a line-oriented relabeller rather than `prometheus_client`'s parser: a vLLM page is ~630
lines, scraped from every backend on every Prometheus scrape. Parsing it into objects and
rendering it back costs milliseconds per page and rewrites numbers and escapes; all the gateway
needs is to insert one label and regroup families, which a single pass over the lines does in a
fraction of that (see the README's "Metrics" section for the figures) and leaves every value
byte for byte as vLLM wrote it.

What is kept, and why:
- only `vllm:*` families. The backends' `python_*`, `process_*` and `http_*` families describe
  each vLLM API server process, carry no model label and would collide across backends; they
  are dropped (read a backend's own `/metrics` for them). `vllm:*_info` families are kept: the
  added `backend` label keeps them apart, and `vllm:cache_config_info` tells each backend's
  KV-cache size.
- no `_created` series. They hold the creation time of a counter or histogram; depending on the
  prometheus-client version a backend runs they are samples inside the family or a separate gauge
  family, so two backends of different vintages would produce the same series name under two
  families. Prometheus ingests them as plain gauges nobody queries; the gateway drops them, from
  its own families too, so the page has one layout whatever the backends and worker count.
- everything else byte for byte; every sample gains `backend="<name>"` (and `replica="host:port"`
  when a backend has several addresses). A label of the same name already on a sample is
  renamed `exported_backend` / `exported_replica`, as Prometheus itself does.

Each family's `# HELP` and `# TYPE` appear once, with the samples of every backend under them.
When two backends disagree on a family's type (different vLLM versions) the first one wins and
the other's samples of that family are left out, so the page stays valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KEPT_PREFIX = "vllm:"
# What may follow a family's name in its samples' names.
_SUFFIXES = frozenset({"", "_total", "_bucket", "_sum", "_count", "_gsum", "_gcount", "_info"})
_TYPED_WITH_CREATED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
_LABEL_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_OURS = frozenset({"backend", "replica"})


def label_text(backend: str, replica: str | None = None) -> str:
    """The label pairs inserted into every sample of one scraped page."""
    text = f'backend="{_escape(backend)}"'
    if replica is not None:
        text += f',replica="{_escape(replica)}"'
    return text


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(slots=True)
class _Family:
    help_line: str | None
    type_line: str | None
    kind: str
    samples: list[str] = field(default_factory=list)


class PageMerger:
    """Collects relabelled families from several pages; `text()` renders them grouped."""

    __slots__ = ("_families",)

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(self, page: str, labels: str) -> None:
        """Add one backend page; `labels` comes from `label_text`."""
        bases: set[str] = set()  # counters/histograms seen: their `_created` twins are dropped
        name = ""  # the family the current lines belong to
        help_line: str | None = None
        target: _Family | None = None  # where its samples go; None: dropped
        decided = True  # False between a HELP line and its TYPE line
        created = ""  # the `_created` sample name inside the current family
        for line in page.splitlines():
            if not line:
                continue
            if line[0] == "#":
                parts = line.split(None, 3)
                if len(parts) < 3 or (parts[1] != "HELP" and parts[1] != "TYPE"):
                    continue  # comments, OpenMetrics' `# EOF` and `# UNIT`
                if parts[2] != name:
                    name, help_line, target, decided, created = parts[2], None, None, False, ""
                if parts[1] == "HELP":
                    help_line = line
                    continue
                kind = parts[3].strip() if len(parts) > 3 else "untyped"
                target, created = self._decide(name, kind, help_line, line, bases)
                decided = True
                continue
            cut = _name_end(line)
            sample = line[:cut]
            if sample == created:
                continue
            belongs = sample.startswith(name) and sample[len(name):] in _SUFFIXES
            if not decided or not belongs:
                # A sample without a TYPE line of its own: an untyped family of that name.
                if not belongs:
                    name, help_line = sample, None
                target, created = self._decide(name, "untyped", help_line, None, bases)
                decided = True
            if target is not None:
                target.samples.append(_relabel(line, cut, labels))

    def _decide(self, name: str, kind: str, help_line: str | None, type_line: str | None,
                bases: set[str]) -> tuple[_Family | None, str]:
        """Where the samples of family `name` go (None: dropped), and its `_created` sample name."""
        created = ""
        if kind in _TYPED_WITH_CREATED:
            base = name[:-6] if kind == "counter" and name.endswith("_total") else name
            bases.add(base)
            created = base + "_created"
        if not name.startswith(KEPT_PREFIX):
            return None, created
        if kind == "gauge" and name.endswith("_created") and name[:-8] in bases:
            return None, created
        family = self._families.get(name)
        if family is None:
            if type_line is None:
                type_line = f"# TYPE {name} {kind}"
            family = self._families[name] = _Family(help_line, type_line, kind)
        elif family.kind != kind:
            return None, created
        return family, created

    def text(self) -> str:
        out: list[str] = []
        for family in self._families.values():
            if not family.samples:
                continue
            if family.help_line is not None:
                out.append(family.help_line)
            if family.type_line is not None:
                out.append(family.type_line)
            out.extend(family.samples)
        if not out:
            return ""
        out.append("")
        return "\n".join(out)


def _name_end(line: str) -> int:
    """Index just past the metric name of a sample line."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        return brace
    return space if space != -1 else len(line)


def _relabel(line: str, cut: int, labels: str) -> str:
    if cut < len(line) and line[cut] == "{":
        rest = line[cut + 1 :]
        if 'backend="' in rest or 'replica="' in rest:
            rest = _LABEL_PAIR.sub(_rename_ours, rest)  # whole pairs, so a value is never mistaken for a name
        if rest.startswith("}"):
            return f"{line[:cut]}{{{labels}{rest}"
        return f"{line[:cut]}{{{labels},{rest}"
    return f"{line[:cut]}{{{labels}}}{line[cut:]}"


def _rename_ours(match: re.Match[str]) -> str:
    if match.group(1) in _OURS:
        return f"exported_{match.group(0)}"
    return match.group(0)
