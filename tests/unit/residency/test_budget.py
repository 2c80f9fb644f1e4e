"""The budget arithmetic alone: what may hold GPU memory together, and what can never work."""

from __future__ import annotations

from vllm_gateway.residency.budget import Budget, awake_together, problems, summary


def budget(shares: dict[str, float | None], resident: set[str], devices: dict[str, tuple[str, ...]] | None = None,
           limit: float = 0.9) -> Budget:
    return Budget(limit, devices or dict.fromkeys(shares, ("0",)), shares, frozenset(resident))


def test_residents_are_always_counted_and_on_demand_ones_only_while_they_hold_memory() -> None:
    b = budget({"embed": 0.1, "a": 0.4, "b": 0.4, "c": 0.4}, {"embed"})
    assert b.use([]) == {"0": 0.1}
    assert b.fits(["a", "b"]) and not b.fits(["a", "b", "c"])
    assert b.over(["a"], "b") == {}
    assert round(b.over(["a", "b"], "c")["0"], 6) == 0.4


def test_decimal_shares_that_add_up_to_the_budget_fit() -> None:
    assert budget({"embed": 0.1, "a": 0.8}, {"embed"}).fits(["a"])  # 0.1 + 0.8 is 0.9000000000000001 in floats


def test_an_unknown_share_takes_all_the_residents_leave() -> None:
    b = budget({"embed": 0.3, "auto": None, "a": 0.1}, {"embed"})
    assert round(b.share_on("auto", "0"), 6) == 0.6
    assert b.fits(["auto"]) and not b.fits(["auto", "a"])


def test_devices_are_counted_apart() -> None:
    b = budget({"a": 0.8, "b": 0.8, "tp": 0.5}, set(), {"a": ("0",), "b": ("1",), "tp": ("0", "1")})
    assert b.fits(["a", "b"])
    assert set(b.over(["a"], "tp")) == {"0"}
    assert b.share_on("a", "1") == 0.0


def test_problems_name_residents_that_cannot_fit_and_on_demand_backends_that_could_never_wake() -> None:
    over = problems(budget({"embed": 0.5, "guard": 0.5, "a": 0.3}, {"embed", "guard"}), ["a"])
    assert len(over) == 1 and "always-resident" in over[0] and "(embed=0.5, guard=0.5)" in over[0]
    assert "residency: on_demand" in over[0]  # says what to change
    never = problems(budget({"embed": 0.2, "a": 0.75, "b": 0.5}, {"embed"}), ["a", "b"])
    assert never == ["backend a (residency: on_demand, gpu_memory_utilization 0.75) could never be woken: beside the "
                     "always-resident backends (embed=0.2) it needs 0.95, above the budget of 0.9; lower its share or "
                     "the residents', or raise gpu.memory_budget"]
    assert problems(budget({"a": 0.95}, set()), ["a"])[0].count("even alone") == 1
    assert problems(budget({"embed": 0.1, "a": 0.8, "b": 0.8}, {"embed"}), ["a", "b"]) == []


def test_the_summary_says_how_many_can_be_awake_at_once() -> None:
    b = budget({"embed": 0.1, "a": 0.4, "b": 0.4, "c": 0.4}, {"embed"})
    assert awake_together(b, ["a", "b", "c"]) == 2
    assert summary(b, ["a", "b", "c"]) == ("GPU memory: always resident 0.10 of budget 0.9; on demand a 0.4, b 0.4, "
                                           "c 0.4; at most 2 of them awake at once")
