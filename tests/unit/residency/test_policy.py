"""The scheduling rules alone, on snapshots: whom to wake, whom to put to sleep, and when to wait."""

from __future__ import annotations

from dataclasses import replace

from vllm_gateway.residency.budget import Budget
from vllm_gateway.residency.policy import (
    DOWN,
    KEEP_ALLOWANCE,
    LOADING,
    Candidate,
    Drain,
    Sleep,
    Undrain,
    Wait,
    Wake,
    decide,
    kept_memory,
)
from vllm_gateway.routing.state import ASLEEP, AWAKE, FAILED, GOING_TO_SLEEP

# Budget 0.9 with a resident 0.1: any one of a, b, c (0.5 each) at a time.
BUDGET = Budget(0.9, {n: ("0",) for n in ("embed", "a", "b", "c")}, {"embed": 0.1, "a": 0.5, "b": 0.5, "c": 0.5},
                frozenset({"embed"}))
NOW = 1000.0


def awake(name: str, **fields) -> Candidate:
    fields.setdefault("awake_since", NOW - 100)
    return Candidate(name, AWAKE, **fields)


def asleep(name: str, **fields) -> Candidate:
    return Candidate(name, ASLEEP, **fields)


def test_nothing_to_do_without_anyone_waiting() -> None:
    assert decide([awake("a"), asleep("b")], BUDGET, NOW, 10) == Wait(None)


def test_a_wanted_backend_that_fits_is_woken_at_once() -> None:
    roomy = Budget(0.9, {"a": ("0",), "b": ("0",)}, {"a": 0.4, "b": 0.4})
    assert decide([awake("a", in_flight=3), asleep("b", wanted_since=NOW)], roomy, NOW, 10) == Wake("b")


def test_an_idle_least_recently_used_backend_is_put_to_sleep_first() -> None:
    candidates = [awake("a", last_used=NOW - 5), asleep("b", wanted_since=NOW - 1)]
    assert decide(candidates, BUDGET, NOW, 10) == Sleep("a")
    # with two idle ones awake (a bigger budget), the older use goes
    two = Budget(1.0, BUDGET.devices, {"embed": 0.1, "a": 0.4, "b": 0.4, "c": 0.4}, frozenset({"embed"}))
    candidates = [awake("a", last_used=NOW - 5), awake("c", last_used=NOW - 50), asleep("b", wanted_since=NOW)]
    assert decide(candidates, two, NOW, 10) == Sleep("c")


def test_min_awake_protects_a_backend_woken_for_requests_but_not_one_never_used() -> None:
    fresh = awake("a", awake_since=NOW - 2, used_since_wake=True, min_awake=10)
    assert decide([fresh, asleep("b", wanted_since=NOW)], BUDGET, NOW, 10) == Wait(NOW - 2 + 10)
    started_unused = replace(fresh, used_since_wake=False)
    assert decide([started_unused, asleep("b", wanted_since=NOW)], BUDGET, NOW, 10) == Sleep("a")


def test_the_awake_models_queue_is_served_first_until_max_swap_delay_then_it_drains() -> None:
    busy = awake("a", in_flight=4, last_used=NOW)
    assert decide([busy, asleep("b", wanted_since=NOW - 3)], BUDGET, NOW, 10) == Wait(NOW - 3 + 10)
    assert decide([busy, asleep("b", wanted_since=NOW - 10)], BUDGET, NOW, 10) == Drain("a")
    draining = Candidate("a", GOING_TO_SLEEP, in_flight=2, draining_since=NOW - 1, drain_timeout=30, awake_since=NOW - 99)
    assert decide([draining, asleep("b", wanted_since=NOW - 11)], BUDGET, NOW, 10) == Wait(NOW - 1 + 30)
    assert decide([replace(draining, in_flight=0), asleep("b", wanted_since=NOW - 11)], BUDGET, NOW, 10) == Sleep("a")
    expired = replace(draining, draining_since=NOW - 31)
    assert decide([expired, asleep("b", wanted_since=NOW - 40)], BUDGET, NOW, 10) == Sleep("a", evict=True)


def test_a_drain_nobody_needs_any_more_is_called_off() -> None:
    draining = Candidate("a", GOING_TO_SLEEP, in_flight=2, draining_since=NOW - 1, awake_since=NOW - 99)
    assert decide([draining, asleep("b")], BUDGET, NOW, 10) == Undrain("a")


def test_wanted_backends_are_woken_in_the_order_of_their_oldest_waiter() -> None:
    candidates = [awake("embed"), asleep("c", wanted_since=NOW - 1), asleep("b", wanted_since=NOW - 5)]
    roomy = Budget(2.0, BUDGET.devices, BUDGET.shares, BUDGET.resident)
    assert decide(candidates, roomy, NOW, 10) == Wake("b")


def test_a_backend_that_cannot_be_woken_yet_does_not_block_the_next_one() -> None:
    roomy = Budget(0.9, {"a": ("0",), "b": ("0",)}, {"a": 0.4, "b": 0.4})
    candidates = [asleep("a", wanted_since=NOW - 9, wakeable=False), asleep("b", wanted_since=NOW - 1)]
    assert decide(candidates, roomy, NOW, 10) == Wake("b")


def test_a_loading_process_is_never_chosen_to_sleep() -> None:
    loading = awake("a", process=LOADING)
    assert decide([loading, asleep("b", wanted_since=NOW - 60)], BUDGET, NOW, 10) == Wait(None)
    down = awake("a", process=DOWN)  # between restarts: it can be parked, nothing runs
    assert decide([down, asleep("b", wanted_since=NOW)], BUDGET, NOW, 10) == Sleep("a")


def test_nothing_is_put_to_sleep_unless_the_whole_room_can_be_made() -> None:
    # b needs 0.8 beside a and c (0.3 each) on a budget of 1.0: both must go, c is busy and max_swap_delay not over.
    shares = Budget(1.0, {n: ("0",) for n in "abc"}, {"a": 0.3, "b": 0.8, "c": 0.3})
    candidates = [awake("a"), awake("c", in_flight=1), asleep("b", wanted_since=NOW - 1)]
    assert decide(candidates, shares, NOW, 10) == Wait(NOW - 1 + 10)
    assert decide(candidates, shares, NOW + 10, 10) == Sleep("a")


def test_a_failed_backend_is_woken_again_only_after_its_retry_time() -> None:
    failed = Candidate("b", FAILED, wanted_since=NOW - 1, retry_at=NOW + 5)
    assert decide([failed], BUDGET, NOW, 10) == Wait(None)
    assert decide([failed], BUDGET, NOW + 5, 10) == Wake("b")


def test_idle_sleep_and_an_operators_sleep() -> None:
    idle = awake("a", idle_sleep=60, last_used=NOW - 61)
    assert decide([idle], BUDGET, NOW, 10) == Sleep("a")
    assert decide([replace(idle, last_used=NOW - 30)], BUDGET, NOW, 10) == Wait(NOW + 30)
    assert decide([replace(idle, last_used=NOW - 61, in_flight=1)], BUDGET, NOW, 10) == Wait(None)
    asked = awake("a", sleep_asked=True, in_flight=1, awake_since=NOW - 1, used_since_wake=True, min_awake=100)
    assert decide([asked], BUDGET, NOW, 10) == Drain("a")  # the operator's ask overrides min_awake


def test_kept_memory_allows_a_sleeping_process_its_context() -> None:
    total = 80 * 2**30
    assert not kept_memory(KEEP_ALLOWANCE, total, 0.75)
    assert not kept_memory(3 * 2**30, total, 0.75)  # under a quarter of its 60 GiB share
    assert kept_memory(30 * 2**30, total, 0.75)  # it freed half: not given back
