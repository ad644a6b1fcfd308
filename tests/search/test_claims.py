"""Which trial makes a dense config: the first to claim it while it beats, a waiter once its
heartbeat has stopped for longer than the stale limit, anyone once the driver released it."""

from __future__ import annotations

import time

from search.dense import Claims


def test_a_claim_is_the_first_askers_while_it_beats() -> None:
    claims = Claims()
    assert claims.claim("k", "maker", stale_after_s=30)[0] == "maker"
    owner, quiet_s = claims.claim("k", "waiter", stale_after_s=30)
    assert owner == "maker"
    assert 0 <= quiet_s < 1
    assert claims.claim("other", "waiter", stale_after_s=30)[0] == "waiter"  # per key


def test_a_waiter_takes_over_a_claim_whose_heartbeat_stopped() -> None:
    claims = Claims()
    claims.claim("k", "maker", stale_after_s=30)
    time.sleep(0.05)
    claims.beat("k", "maker")
    assert claims.claim("k", "waiter", stale_after_s=0.04)[0] == "maker"  # it just beat
    time.sleep(0.05)
    assert claims.claim("k", "waiter", stale_after_s=0.04)[0] == "waiter"  # silent: taken over
    claims.beat("k", "maker")  # the old maker's late beat does not take it back
    assert claims.claim("k", "maker", stale_after_s=30)[0] == "waiter"


def test_a_released_trials_claims_go_to_the_next_to_ask() -> None:
    claims = Claims()
    claims.claim("k", "maker", stale_after_s=30)
    claims.claim("j", "maker", stale_after_s=30)
    claims.release("maker")
    assert claims.claim("k", "waiter", stale_after_s=30)[0] == "waiter"
    assert claims.claim("j", "third", stale_after_s=30)[0] == "third"
