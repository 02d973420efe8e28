"""Planning of the gap-free change feed (emr_runtime.changefeed): pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from emr_runtime.changefeed import FeedPlan, check_feed_request, plan_feed
from emr_runtime.errors import InvalidArgumentError

NOW = datetime(2024, 6, 15, 8, 30, tzinfo=UTC)
SETTLE = timedelta(seconds=30)


# --- plan_feed -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    sequence: int
    committed_at: datetime
    tombstone: bool = False


def change(sequence: int, age: timedelta = timedelta(0), *, tombstone: bool = False) -> Entry:
    return Entry(sequence, NOW - age, tombstone)


def sequences(plan: FeedPlan[Entry]) -> list[int]:
    return [c.sequence for c in plan.ready]


def test_empty_feed() -> None:
    assert plan_feed(7, [], NOW, SETTLE) == FeedPlan((), ())


def test_contiguous_run_is_handed_out() -> None:
    changes = [change(11), change(12), change(13)]
    plan = plan_feed(10, changes, NOW, SETTLE)
    assert plan.ready == tuple(changes)
    assert plan.holes_to_close == ()


def test_fresh_hole_blocks_the_run() -> None:
    plan = plan_feed(10, [change(11), change(12), change(14), change(15)], NOW, SETTLE)
    assert sequences(plan) == [11, 12]
    assert plan.holes_to_close == ()


def test_hole_followed_by_a_change_just_younger_than_settle_still_blocks() -> None:
    late = SETTLE - timedelta(microseconds=1)
    plan = plan_feed(10, [change(11), change(13, late)], NOW, SETTLE)
    assert sequences(plan) == [11]
    assert plan.holes_to_close == ()


def test_hole_followed_by_an_old_change_is_closed() -> None:
    old = SETTLE + timedelta(seconds=1)
    plan = plan_feed(10, [change(11, old), change(12, old), change(14, old), change(15, old)], NOW, SETTLE)
    assert sequences(plan) == [11, 12]
    assert plan.holes_to_close == (13,)


def test_change_exactly_settle_old_closes_the_hole() -> None:
    plan = plan_feed(10, [change(12, SETTLE)], NOW, SETTLE)
    assert plan == FeedPlan((), (11,))


def test_wide_hole_is_closed_in_full() -> None:
    plan = plan_feed(10, [change(11), change(16, timedelta(minutes=5))], NOW, SETTLE)
    assert sequences(plan) == [11]
    assert plan.holes_to_close == (12, 13, 14, 15)


def test_only_the_first_hole_is_closed() -> None:
    old = timedelta(minutes=5)
    plan = plan_feed(10, [change(11, old), change(13, old), change(15, old)], NOW, SETTLE)
    assert sequences(plan) == [11]
    assert plan.holes_to_close == (12,)


def test_fresh_hole_at_the_very_start_after_the_cursor() -> None:
    plan = plan_feed(10, [change(12), change(13)], NOW, SETTLE)
    assert plan == FeedPlan((), ())


def test_old_hole_at_the_very_start_after_the_cursor() -> None:
    old = timedelta(hours=1)
    plan = plan_feed(10, [change(13, old), change(14, old)], NOW, SETTLE)
    assert plan == FeedPlan((), (11, 12))


def test_feed_from_the_beginning() -> None:
    plan = plan_feed(0, [change(1), change(2)], NOW, SETTLE)
    assert sequences(plan) == [1, 2]
    assert plan_feed(0, [change(2, timedelta(hours=1))], NOW, SETTLE) == FeedPlan((), (1,))


def test_tombstones_are_handed_out_in_ready() -> None:
    tombstone = change(12, tombstone=True)
    plan = plan_feed(10, [change(11), tombstone, change(13)], NOW, SETTLE)
    assert sequences(plan) == [11, 12, 13]
    assert plan.ready[1] is tombstone
    assert plan.ready[1].tombstone
    assert plan.holes_to_close == ()


# --- check_feed_request ----------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "expected"), [(0, 100), (1, 1), (250, 250), (1000, 1000)])
def test_feed_limit(limit: int, expected: int) -> None:
    assert check_feed_request(0, limit) == expected


@pytest.mark.parametrize("limit", [-1, 1001])
def test_feed_limit_out_of_bounds(limit: int) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_feed_request(5, limit)
    assert [v.field for v in caught.value.violations] == ["limit"]


def test_negative_after_sequence() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_feed_request(-1, 10)
    assert [v.field for v in caught.value.violations] == ["after_sequence"]


def test_feed_request_reports_both_violations() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_feed_request(-5, 5000)
    assert [v.field for v in caught.value.violations] == ["after_sequence", "limit"]
