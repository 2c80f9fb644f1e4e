"""`app.metrics.merge`: backend pages folded into one valid page, every sample labelled by backend.

The real vLLM pages come from `shared/reference/vllm-samples/` (captures of vLLM 0.32 on CPU).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.promtool import promtool_findings
from vllm_gateway.metrics.merge import PageMerger, label_text

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "vllm-samples"


def vllm_page(name: str) -> str:
    """The body of a captured `GET /metrics` of real vLLM (the capture's own lines dropped)."""
    text = (SAMPLES / f"metrics_{name}.txt").read_text()
    body = text.split("\n\n", 1)[1]
    return "\n".join(line for line in body.splitlines() if not line.startswith("###")) + "\n"


def merge_pages(pages: list[tuple[str, str]]) -> str:
    merger = PageMerger()
    for page, labels in pages:
        merger.add(page, labels)
    return merger.text()


def families(text: str) -> list:
    """Parse with prometheus_client, failing on duplicate family names."""
    parsed = list(text_string_to_metric_families(text))
    names = [f.name for f in parsed]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    return parsed


def vllm_samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("vllm:")]


@pytest.fixture(scope="module")
def real_pages() -> tuple[str, str]:
    return vllm_page("chat"), vllm_page("embed")


def test_real_vllm_pages_merge_into_one_valid_page(real_pages):
    chat, embed = real_pages
    merged = merge_pages([(chat, label_text("chat")), (embed, label_text("embed"))])
    parsed = families(merged)
    assert parsed and all(f.name.startswith("vllm:") for f in parsed)
    backends = set()
    for family in parsed:
        for sample in family.samples:
            assert sample.labels.get("backend") in ("chat", "embed"), sample
            assert not sample.name.endswith("_created"), sample
            backends.add(sample.labels["backend"])
    assert backends == {"chat", "embed"}
    # Every non-_created vllm sample of both pages is there, value for value.
    def kept(page: str) -> int:
        return sum(1 for line in vllm_samples(page) if "_created" not in line.split("{")[0])
    assert len(vllm_samples(merged)) == kept(chat) + kept(embed)
    assert 'vllm:prompt_tokens_total{backend="chat",engine="0",model_name="tiny-chat"} 35672.0' in merged.splitlines()
    # HELP and TYPE once per family.
    for kind in ("# HELP ", "# TYPE "):
        names = [line.split()[2] for line in merged.splitlines() if line.startswith(kind)]
        assert len(names) == len(set(names))
    # The histogram whose name ends in _total keeps its type and all its samples.
    iteration = next(f for f in parsed if f.name == "vllm:iteration_tokens_total")
    assert iteration.type == "histogram"
    assert {s.name for s in iteration.samples} == {f"vllm:iteration_tokens_total_{s}" for s in ("bucket", "sum", "count")}
    # Process, Python and HTTP families of the API servers are left out; info families are labelled.
    assert "python_" not in merged and "process_" not in merged and "http_request" not in merged
    info = next(f for f in parsed if f.name == "vllm:cache_config_info")
    assert sorted(s.labels["backend"] for s in info.samples) == ["chat", "embed"]


def test_promtool_finds_nothing_vllm_itself_does_not_already_have(real_pages):
    chat, embed = real_pages
    raw = promtool_findings(chat) | promtool_findings(embed)
    merged = merge_pages([(chat, label_text("chat")), (embed, label_text("embed", "10.0.0.2:8000"))])
    findings = promtool_findings(merged)
    assert findings, "promtool reported nothing at all: was the page read?"
    assert findings <= raw, findings - raw
    assert 'vllm:iteration_tokens_total non-counter metrics should not have "_total" suffix' in findings


def test_created_series_are_dropped_in_either_layout():
    # Newer prometheus-client: `_created` as a separate gauge family; older: inside the family.
    new_layout = """# HELP vllm:prompt_tokens_total Prompt tokens.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="a"} 5.0
# HELP vllm:prompt_tokens_created Prompt tokens.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{model_name="a"} 1.7e+09
# HELP vllm:ttft_seconds TTFT.
# TYPE vllm:ttft_seconds histogram
vllm:ttft_seconds_bucket{le="+Inf",model_name="a"} 1.0
vllm:ttft_seconds_count{model_name="a"} 1.0
vllm:ttft_seconds_sum{model_name="a"} 0.5
# HELP vllm:ttft_seconds_created TTFT.
# TYPE vllm:ttft_seconds_created gauge
vllm:ttft_seconds_created{model_name="a"} 1.7e+09
"""
    old_layout = """# HELP vllm:prompt_tokens_total Prompt tokens.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="b"} 7.0
vllm:prompt_tokens_created{model_name="b"} 1.7e+09
# HELP vllm:ttft_seconds TTFT.
# TYPE vllm:ttft_seconds histogram
vllm:ttft_seconds_bucket{le="+Inf",model_name="b"} 2.0
vllm:ttft_seconds_count{model_name="b"} 2.0
vllm:ttft_seconds_sum{model_name="b"} 0.7
vllm:ttft_seconds_created{model_name="b"} 1.7e+09
"""
    merged = merge_pages([(new_layout, label_text("new")), (old_layout, label_text("old"))])
    assert "_created" not in merged
    parsed = {f.name: f for f in families(merged)}
    assert [s.value for s in parsed["vllm:prompt_tokens"].samples] == [5.0, 7.0]
    assert len(parsed["vllm:ttft_seconds"].samples) == 6
    assert not promtool_findings(merged) - {
        "vllm:prompt_tokens_total metric names should not contain ':'",
        "vllm:ttft_seconds metric names should not contain ':'",
    }


def test_a_gauge_named_created_without_a_counter_twin_is_kept():
    page = "# HELP vllm:blocks_created Blocks.\n# TYPE vllm:blocks_created gauge\nvllm:blocks_created 3.0\n"
    assert merge_pages([(page, label_text("a"))]) == (
        '# HELP vllm:blocks_created Blocks.\n# TYPE vllm:blocks_created gauge\nvllm:blocks_created{backend="a"} 3.0\n'
    )


def test_labels_are_inserted_without_touching_the_rest_of_the_line():
    page = """# TYPE vllm:plain gauge
vllm:plain 1.5e+09
# TYPE vllm:empty gauge
vllm:empty{} 2
# TYPE vllm:stamped gauge
vllm:stamped{a="x"} 3 1712345678000
# TYPE vllm:odd gauge
vllm:odd{path="/v1/{id} x",quote="say \\"hi\\", backend=\\"no\\""} -Inf
"""
    merged = merge_pages([(page, label_text("b1", "10.0.0.1:8000"))])
    assert merged.splitlines() == [
        "# TYPE vllm:plain gauge",
        'vllm:plain{backend="b1",replica="10.0.0.1:8000"} 1.5e+09',
        "# TYPE vllm:empty gauge",
        'vllm:empty{backend="b1",replica="10.0.0.1:8000"} 2',
        "# TYPE vllm:stamped gauge",
        'vllm:stamped{backend="b1",replica="10.0.0.1:8000",a="x"} 3 1712345678000',
        "# TYPE vllm:odd gauge",
        'vllm:odd{backend="b1",replica="10.0.0.1:8000",path="/v1/{id} x",quote="say \\"hi\\", backend=\\"no\\""} -Inf',
    ]
    odd = next(f for f in families(merged) if f.name == "vllm:odd").samples[0]
    assert odd.labels == {"backend": "b1", "replica": "10.0.0.1:8000", "path": "/v1/{id} x",
                          "quote": 'say "hi", backend="no"'}
    assert odd.value == -math.inf


def test_a_label_named_backend_on_the_sample_is_renamed_not_duplicated():
    page = '# TYPE vllm:x gauge\nvllm:x{backend="cpu",replica="r0"} 1\n'
    (sample,) = families(merge_pages([(page, label_text("gpu"))]))[0].samples
    assert sample.labels == {"backend": "gpu", "exported_backend": "cpu", "exported_replica": "r0"}


def test_families_are_grouped_across_backends_with_help_and_type_once():
    a = "# HELP vllm:g G.\n# TYPE vllm:g gauge\nvllm:g 1\n# HELP vllm:only_a A.\n# TYPE vllm:only_a gauge\nvllm:only_a 2\n"
    b = "# HELP vllm:g G, other wording.\n# TYPE vllm:g gauge\nvllm:g 3\n"
    assert merge_pages([(a, label_text("a")), (b, label_text("b"))]).splitlines() == [
        "# HELP vllm:g G.", "# TYPE vllm:g gauge", 'vllm:g{backend="a"} 1', 'vllm:g{backend="b"} 3',
        "# HELP vllm:only_a A.", "# TYPE vllm:only_a gauge", 'vllm:only_a{backend="a"} 2',
    ]


def test_a_family_whose_type_differs_between_backends_keeps_the_first():
    a = "# TYPE vllm:q gauge\nvllm:q 1\n"
    b = "# TYPE vllm:q counter\nvllm:q 4\nvllm:q_created 1.7e9\n# TYPE vllm:r gauge\nvllm:r 5\n"
    merged = merge_pages([(a, label_text("a")), (b, label_text("b"))])
    assert merged.splitlines() == ["# TYPE vllm:q gauge", 'vllm:q{backend="a"} 1', "# TYPE vllm:r gauge", 'vllm:r{backend="b"} 5']


def test_untyped_samples_openmetrics_markers_and_other_families():
    page = """# a comment
vllm:bare{x="1"} 1
# HELP vllm:helped Only help.
vllm:helped 2
# UNIT vllm:helped seconds
# HELP process_open_fds Open fds.
# TYPE process_open_fds gauge
process_open_fds 9
# TYPE http_requests_total counter
http_requests_total{handler="/v1/models"} 3
# TYPE lmcache:hits gauge
lmcache:hits 3
# EOF
"""
    merged = merge_pages([(page, label_text("a"))])
    assert merged.splitlines() == [
        "# TYPE vllm:bare untyped", 'vllm:bare{backend="a",x="1"} 1',
        "# HELP vllm:helped Only help.", "# TYPE vllm:helped untyped", 'vllm:helped{backend="a"} 2',
    ]


def test_nothing_kept_gives_an_empty_text():
    assert merge_pages([]) == ""
    assert merge_pages([("# TYPE python_info gauge\npython_info 1\n", label_text("a"))]) == ""


def test_label_text_escapes():
    assert label_text("a") == 'backend="a"'
    assert label_text("a", 'h"\\') == 'backend="a",replica="h\\"\\\\"'


_VALUE_TEXT = st.text(alphabet=st.sampled_from('ab{}",=\\ \n/#é'), max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_VALUE_TEXT, st.floats(min_value=0, max_value=1e12)), min_size=1, max_size=5),
       st.sampled_from(["counter", "gauge", "histogram"]))
def test_any_prometheus_client_page_survives_relabelling(children, kind):
    """Whatever label values a backend writes, the merged page parses back to the same samples plus
    `backend`."""
    registry = CollectorRegistry()
    maker = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[kind]
    metric = maker("vllm:thing", "A thing.", ["path"], registry=registry)
    for value_text, number in children:
        child = metric.labels(value_text)
        getattr(child, {"counter": "inc", "gauge": "set", "histogram": "observe"}[kind])(number)
    page = generate_latest(registry).decode()
    merger = PageMerger()
    merger.add(page, label_text("be"))
    merger.add(page, label_text("be2", "h:1"))
    merged = merger.text()
    before = [(s.name, s.labels, s.value) for f in families(page) for s in f.samples if not s.name.endswith("_created")]
    after = [(s.name, s.labels, s.value) for f in families(merged) for s in f.samples]
    expected = [(n, {**labels, "backend": "be"}, v) for n, labels, v in before]
    expected += [(n, {**labels, "backend": "be2", "replica": "h:1"}, v) for n, labels, v in before]
    assert after == expected
