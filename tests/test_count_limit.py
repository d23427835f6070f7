"""CountLimit: the limit of a snapshot's bounded count, adapted to how long reads take."""

from __future__ import annotations

from squeal.snapshot import CountLimit

FAST, SLOW = 0.001, 1.0


def test_it_grows_while_reads_are_fast_and_estimated() -> None:
    limit = CountLimit(value=10, target=0.05, most=100)
    for expected in (20, 40, 80, 100, 100):
        limit.after(FAST, estimated=True)
        assert limit.value == expected


def test_exact_reads_leave_it_alone() -> None:
    limit = CountLimit(value=10)
    limit.after(FAST, estimated=False)
    assert limit.value == 10


def test_a_slow_read_halves_it_and_it_stays_below_that_value() -> None:
    limit = CountLimit(value=64, target=0.05, least=10, patience=3)
    limit.after(SLOW, estimated=True)
    assert limit.value == 32
    limit.after(FAST, estimated=True)
    assert limit.value == 32, "64 was too slow: doubling back to it would be again"
    limit.after(0.02, estimated=True)
    assert limit.value == 32, "not fast enough to grow"
    limit.after(FAST, estimated=True)
    assert limit.value == 64, "after patience reads it tries again"
    for _ in range(5):
        limit.after(SLOW, estimated=True)
    assert limit.value == 10, "never below least"
