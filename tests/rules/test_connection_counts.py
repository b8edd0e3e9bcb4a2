"""Connection caps, counted: per user (never more than half of all), per address, in all."""

from __future__ import annotations

from addons.rules.connection_counts import Caps
from addons.rules.connection_counts import ConnectionCounts
from addons.rules.connection_counts import total_for


def test_a_user_over_their_cap_is_refused_and_others_are_not():
    counts = ConnectionCounts(Caps(per_user=2, per_address=100, total=100))
    for _ in range(2):
        counts.opened("10.0.0.1")
        assert counts.refusal("10.0.0.1", "alice") is None
        counts.claim("alice")
    counts.opened("10.0.0.1")
    status, why = counts.refusal("10.0.0.1", "alice")
    assert status == 429 and "connections.max_per_user" in why
    assert counts.refusal("10.0.0.1", "bob") is None
    counts.closed("10.0.0.1", "alice")  # one of alice's closes: she fits again
    assert counts.refusal("10.0.0.1", "alice") is None


def test_one_user_never_holds_more_than_half_of_all():
    caps = Caps(per_user=1000, per_address=1000, total=10)
    assert caps.user_share == 5


def test_addresses_and_the_total_have_caps_too():
    counts = ConnectionCounts(Caps(per_user=100, per_address=2, total=3))
    for _ in range(3):
        counts.opened("10.0.0.1")
    assert counts.refusal("10.0.0.1", None)[0] == 429
    assert "connections.max_per_address" in counts.refusal("10.0.0.1", None)[1]
    counts.opened("10.0.0.2")
    status, why = counts.refusal("10.0.0.2", None)
    assert status == 503 and "connections.max_total" in why


def test_the_total_keeps_a_reserve_of_descriptors():
    assert total_for(1024) == (1024 - 64) // 2
    assert total_for(20) == 16
