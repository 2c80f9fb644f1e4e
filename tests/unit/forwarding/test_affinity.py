"""`app.affinity`: where stored responses live, remembered within a bound."""

from __future__ import annotations

from vllm_gateway.forwarding.affinity import RESPONSE_ID, Holder, ResponseAffinity, id_in_stream


def test_the_least_recently_used_holder_goes_first_when_full() -> None:
    affinity = ResponseAffinity(capacity=2)
    a, b, c = (Holder("chat", f"http://h{i}:8000", "m") for i in range(3))
    affinity.remember("resp_a", a)
    affinity.remember("resp_b", b)
    assert affinity.holder("resp_a") == a  # used: now the most recent
    affinity.remember("resp_c", c)
    assert affinity.holder("resp_b") is None and affinity.holder("resp_a") == a and affinity.holder("resp_c") == c
    assert len(affinity) == 2


def test_the_id_comes_from_the_first_event_of_a_stream() -> None:
    first = (b'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
             b'"response":{"id":"resp_8b5edc81377868e8","object":"response","output":[{"id":"msg_1"}]}}\n\n')
    assert id_in_stream(first) == "resp_8b5edc81377868e8"
    assert id_in_stream(b'event: response.output_text.delta\ndata: {"item_id":"msg_1"}\n\n') is None


def test_only_response_ids_are_accepted() -> None:
    assert RESPONSE_ID.match("resp_8b5edc81377868e8")
    for bad in ("resp_", "msg_1", "resp_../x", "resp_a b", "resp_" + "a" * 201):
        assert not RESPONSE_ID.match(bad)
