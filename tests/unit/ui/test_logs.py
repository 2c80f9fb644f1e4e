"""Log rings: one sequence over every source, bounded per source, the gateway's handler for the app's life."""

from __future__ import annotations

import logging

from vllm_gateway.ui.logs import GATEWAY, LogBook, attach, detach


def test_lines_keep_their_order_across_sources_and_each_source_is_bounded() -> None:
    book = LogBook(size=3)
    book.backend_output("chat", ["c1", "c2"])
    book.add(GATEWAY, ["g1"], "INFO")
    book.backend_output("chat", ["c3", "c4"])
    assert [(line["source"], line["text"]) for line in book.lines()] == [
        ("chat", "c2"), (GATEWAY, "g1"), ("chat", "c3"), ("chat", "c4")]
    assert [line["text"] for line in book.lines(after=3)] == ["c3", "c4"]
    assert [line["text"] for line in book.lines(limit=2)] == ["c3", "c4"]
    assert book.sources() == ["chat", GATEWAY]


def test_a_very_long_line_is_cut_and_markup_is_kept_as_text() -> None:
    book = LogBook()
    book.backend_output("chat", ["<script>alert(1)</script>" + "x" * 10_000])
    (line,) = book.lines()
    assert line["text"].startswith("<script>") and len(line["text"]) == 4000  # the page puts it in textContent


def test_the_handler_sees_the_gateways_log_only_while_attached() -> None:
    book = LogBook()
    logger = logging.getLogger("vllm_gateway.test_logs")
    logger.setLevel(logging.INFO)
    handler = attach(book)
    try:
        logger.warning("backend %r: restarting in %.1f s", "chat", 1.0)
        logger.info("two\nlines")
    finally:
        detach(handler)
    logger.warning("after")
    lines = book.lines()
    assert [(line["level"], line["text"]) for line in lines] == [
        ("WARNING", "vllm_gateway.test_logs: backend 'chat': restarting in 1.0 s"),
        ("INFO", "vllm_gateway.test_logs: two"), ("INFO", "lines")]
    assert handler not in logging.getLogger("vllm_gateway").handlers
