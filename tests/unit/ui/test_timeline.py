"""The timeline: runs of one state, restarts and swaps marked, nothing older than the span kept."""

from __future__ import annotations

from vllm_gateway.ui.timeline import Timeline, shown_state


def backend(state: str = "ready", restarts: int | None = 0, residency: dict | None = None) -> dict:
    info = {"name": "chat", "state": state, "restarts": restarts}
    if residency is not None:
        info["residency"] = residency
    return info


def test_runs_change_with_the_state_and_restarts_are_marked() -> None:
    timeline = Timeline()
    for second, (state, restarts) in enumerate([("starting", 0), ("ready", 0), ("ready", 0), ("restarting", 0),
                                                ("restarting", 1), ("ready", 1)]):
        timeline.sample([backend(state, restarts)], 100.0 + second)
    track = timeline.export(105.0)["backends"]["chat"]
    assert track["runs"] == [[100.0, 101.0, "starting"], [101.0, 103.0, "ready"], [103.0, 105.0, "restarting"],
                             [105.0, 105.0, "ready"]]
    assert track["marks"] == [[104.0, "restart"]]


def test_residency_is_drawn_while_ready_and_swaps_are_marked() -> None:
    timeline = Timeline()
    timeline.sample([backend(residency={"state": "awake", "swaps": 0})], 1.0)
    timeline.sample([backend(residency={"state": "asleep", "swaps": 1})], 2.0)
    timeline.sample([backend(residency={"state": "waking", "swaps": {"to_sleep": 1, "to_wake": 1}})], 3.0)
    track = timeline.export(3.0)["backends"]["chat"]
    assert [run[2] for run in track["runs"]] == ["awake", "asleep", "waking"]
    assert track["marks"] == [[2.0, "swap"], [3.0, "swap"]]
    assert shown_state(backend("failed", residency={"state": "asleep"})) == "failed"


def test_only_the_last_hour_is_kept() -> None:
    timeline = Timeline(span=3600)
    timeline.sample([backend("ready", 0)], 0.0)
    timeline.sample([backend("restarting", 1)], 10.0)
    timeline.sample([backend("ready", 1)], 20.0)
    timeline.sample([backend("ready", 1)], 3615.0)
    exported = timeline.export(3615.0)
    track = exported["backends"]["chat"]
    assert [run[2] for run in track["runs"]] == ["restarting", "ready"]  # the first run ended before the hour began
    assert track["runs"][0][0] == exported["since"] == 15.0  # clipped to the hour
    assert track["marks"] == []  # the restart at 10 s is older than the hour
