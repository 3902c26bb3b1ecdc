"""The lease decision of the operator's leader election (omnitrain.operator.leader_lease), without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime

from omnitrain.operator.leader_lease import LeaseRecord, LeaseTerms, next_record, still_leading

WALL = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
ME = LeaseTerms(name="omnitrain-operator", namespace="omnitrain-system", identity="op-a")


def held_by(holder: str, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration_s=15, acquired=WALL, renewed=WALL, transitions=transitions)


def test_no_lease_is_taken_with_this_replica_as_holder():
    wanted = next_record(None, 0.0, 0.0, WALL, ME)
    assert wanted == LeaseRecord(holder="op-a", duration_s=15, acquired=WALL, renewed=WALL, transitions=0)


def test_a_live_lease_of_another_replica_is_left_alone_until_it_has_not_changed_for_its_duration():
    other = held_by("op-b", transitions=3)
    assert next_record(other, seen_changed_s=100.0, now_s=114.9, wall=WALL, terms=ME) is None
    taken = next_record(other, seen_changed_s=100.0, now_s=115.0, wall=WALL, terms=ME)
    assert taken is not None and taken.holder == "op-a" and taken.transitions == 4 and taken.acquired == WALL


def test_expiry_is_the_lease_s_own_duration_as_seen_on_the_local_clock_not_its_renew_time():
    # the holder's renewTime says an hour ago (its clock is behind ours): it is still live, since we saw it change
    # a moment ago
    other = LeaseRecord(holder="op-b", duration_s=40, renewed=datetime(2026, 12, 3, 9, 0, tzinfo=UTC))
    assert next_record(other, seen_changed_s=10.0, now_s=30.0, wall=WALL, terms=ME) is None
    assert next_record(other, seen_changed_s=10.0, now_s=50.0, wall=WALL, terms=ME) is not None


def test_a_released_lease_is_taken_at_once():
    released = LeaseRecord(holder=None, duration_s=1, transitions=5)
    taken = next_record(released, seen_changed_s=0.0, now_s=0.0, wall=WALL, terms=ME)
    assert taken is not None and taken.holder == "op-a" and taken.transitions == 6


def test_the_holder_renews_keeping_when_it_took_the_lease_and_the_transition_count():
    later = datetime(2026, 12, 3, 10, 5, tzinfo=UTC)
    mine = held_by("op-a", transitions=2)
    renewed = next_record(mine, seen_changed_s=0.0, now_s=1000.0, wall=later, terms=ME)
    assert renewed == LeaseRecord(holder="op-a", duration_s=15, acquired=WALL, renewed=later, transitions=2)


def test_the_leader_stops_acting_at_the_renew_deadline_which_is_before_a_standby_may_take_over():
    assert still_leading(last_renewed_s=100.0, now_s=109.9, terms=ME)
    assert not still_leading(last_renewed_s=100.0, now_s=110.0, terms=ME)
    assert ME.renew_deadline_s < ME.duration_s


def test_terms_that_would_let_two_replicas_act_at_once_are_refused_with_the_rule():
    assert ME.problems() == []
    bad = LeaseTerms(name="x", namespace="n", identity="a", duration_s=10, renew_deadline_s=10, retry_s=2)
    (problem,) = bad.problems()
    assert "renew deadline (10 s) < lease duration (10 s)" in problem and "2 < 10 < 15" in problem
    assert LeaseTerms(name="", namespace="n", identity="a").problems()
