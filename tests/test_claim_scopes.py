"""What a queue object remembers about its claims (squeal.claim_scope), without a database:
when a claim walks both whole indexes."""

from __future__ import annotations

from squeal.claim_scope import FULL_SWEEP_COST_RATIO, FULL_SWEEP_SECONDS, ClaimScopes
from squeal.dialects.base import EVERYWHERE, ClaimedRow

ROWS: list[ClaimedRow] = [(1, b"x", 0, 1, 0)]


def _after_a_full_sweep_that_took(took: float) -> ClaimScopes:
    scopes = ClaimScopes()
    first = scopes.scope("t", 0.0)
    assert first == EVERYWHERE
    scopes.claimed("t", first, started=0.0, finished=took, rows=ROWS, asked=1)
    return scopes


def test_a_quick_full_sweep_comes_again_after_full_sweep_seconds() -> None:
    scopes = _after_a_full_sweep_that_took(0.01)
    assert scopes.scope("t", FULL_SWEEP_SECONDS - 0.5) != EVERYWHERE
    assert scopes.scope("t", FULL_SWEEP_SECONDS) == EVERYWHERE


def test_a_slow_full_sweep_waits_in_proportion_to_its_cost() -> None:
    """A full sweep that took 10 s (a snapshot held on PostgreSQL) comes again only after
    FULL_SWEEP_COST_RATIO times that; the sweeps between still walk the recent due window."""
    took = 10.0
    scopes = _after_a_full_sweep_that_took(took)
    spaced = took * FULL_SWEEP_COST_RATIO
    assert spaced > FULL_SWEEP_SECONDS
    between = scopes.scope("t", spaced - 1.0)
    assert between.sweep
    assert between.due_within_ms is not None
    assert scopes.scope("t", spaced) == EVERYWHERE
