from vllm_gateway.routing.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures():
    breaker = CircuitBreaker(3, 5.0, Clock())
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow() and breaker.state == CLOSED
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()


def test_a_success_resets_the_count():
    breaker = CircuitBreaker(2, 5.0, Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == CLOSED


def test_half_open_lets_exactly_one_trial_through():
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock)
    breaker.record_failure()
    clock.now += 4.9
    assert not breaker.allow()
    assert 0.0 < breaker.retry_after() <= 1.0 or breaker.retry_after() == 1.0
    clock.now += 0.2
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow(), "a second request waits for the trial's outcome"
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow()


def test_trip_opens_at_once_and_keeps_the_first_opening_time():
    clock = Clock()
    breaker = CircuitBreaker(10, 5.0, clock)
    breaker.trip()
    clock.now += 3
    breaker.trip()
    assert breaker.retry_after() == 2.0
