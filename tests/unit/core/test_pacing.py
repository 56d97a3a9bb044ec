"""When a failing coordinator step is tried again, and when it is logged."""

from __future__ import annotations

from core.pacing import Outage, Periodic


def test_a_failed_step_is_not_due_at_once_and_backs_off_up_to_its_interval() -> None:
    step = Periodic(interval_s=2.0, due=100.0)
    assert step.is_due(100.0)
    delays = []
    now = 100.0
    for _ in range(8):
        step.failed(now, jitter=0.0)
        delays.append(step.due - now)
        assert not step.is_due(now)  # the defect: a failed renewal stayed due and the loop spun
        now = step.due
    assert delays[:4] == [0.125, 0.25, 0.5, 1.0]  # half of 0.25 s doubling (jitter 0 keeps half)
    assert max(delays) <= 2.0


def test_an_outage_is_reported_when_it_starts_and_when_it_ends_not_at_every_attempt() -> None:
    step = Periodic(interval_s=1.0, due=0.0)
    starts = [step.failed(t, jitter=0.5) for t in (10.0, 11.0, 12.0)]
    assert starts == [True, False, False]
    assert step.succeeded(15.0) == (5.0, 3)
    assert step.due == 16.0
    assert step.succeeded(16.0) is None  # no outage to end


def test_outage_counts_failures_until_a_success() -> None:
    outage = Outage()
    assert outage.failed(1.0) and not outage.failed(2.0)
    assert outage.succeeded(4.0) == (3.0, 2)
    assert outage.failures == 0 and outage.since is None
