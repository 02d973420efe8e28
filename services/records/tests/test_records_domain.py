"""Unit tests of the records domain: encounter validation and the change-feed plan (pure, no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emr_records.domain import (
    FUTURE_TOLERANCE,
    Change,
    ChangeKind,
    EncounterClass,
    EncounterInput,
    EncounterStatus,
    FeedPlan,
    check_feed_request,
    plan_feed,
    validate_encounter,
)
from emr_runtime.errors import InvalidArgumentError

NOW = datetime(2024, 6, 15, 8, 30, tzinfo=UTC)
SETTLE = timedelta(seconds=30)


def encounter_input(**changes: Any) -> EncounterInput:
    valid = EncounterInput(
        request_id="9b0e4a52-0f5f-4d6c-8f3e-5a1b2c3d4e5f",
        patient_id="patient-1",
        facility_code="79001",
        encounter_class=EncounterClass.OUTPATIENT,
        status=EncounterStatus.IN_PROGRESS,
        start_time=NOW - timedelta(hours=1),
        end_time=None,
        reason="Sốt cao 3 ngày",
        fingerprint="fp-1",
    )
    return replace(valid, **changes)


def violations_of(raw: EncounterInput) -> dict[str, str]:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_encounter(raw, "enc-1", NOW)
    return {v.field: v.description for v in caught.value.violations}


def only_violation(raw: EncounterInput) -> str:
    found = violations_of(raw)
    assert len(found) == 1, found
    return next(iter(found))


# --- validate_encounter ----------------------------------------------------------------------------


def test_valid_encounter_is_normalised() -> None:
    start = NOW - timedelta(hours=2)
    end = NOW - timedelta(hours=1)
    raw = encounter_input(
        patient_id="  patient-1 ",
        facility_code=" ab12c ",
        status=EncounterStatus.FINISHED,
        start_time=start,
        end_time=end,
        reason="  Khám định kỳ  ",
    )
    encounter = validate_encounter(raw, "enc-1", NOW)
    assert encounter.encounter_id == "enc-1"
    assert encounter.patient_id == "patient-1"
    assert encounter.facility_code == "AB12C"
    assert encounter.encounter_class is EncounterClass.OUTPATIENT
    assert encounter.status is EncounterStatus.FINISHED
    assert encounter.start_time == start
    assert encounter.end_time == end
    assert encounter.reason == "Khám định kỳ"
    assert encounter.version == 1
    assert encounter.created_at == NOW
    assert encounter.request_fingerprint == "fp-1"


@pytest.mark.parametrize("encounter_class", list(EncounterClass))
@pytest.mark.parametrize("status", [s for s in EncounterStatus if s is not EncounterStatus.FINISHED])
def test_every_class_and_open_status_is_accepted(
    encounter_class: EncounterClass, status: EncounterStatus
) -> None:
    encounter = validate_encounter(encounter_input(encounter_class=encounter_class, status=status), "e", NOW)
    assert (encounter.encounter_class, encounter.status) == (encounter_class, status)


def test_end_before_start() -> None:
    raw = encounter_input(start_time=NOW - timedelta(hours=1), end_time=NOW - timedelta(hours=1, seconds=1))
    assert violations_of(raw) == {"end_time": "is before start_time"}


def test_end_equal_to_start_is_accepted() -> None:
    start = NOW - timedelta(hours=1)
    assert validate_encounter(encounter_input(start_time=start, end_time=start), "e", NOW).end_time == start


def test_start_in_the_future_beyond_tolerance() -> None:
    raw = encounter_input(start_time=NOW + FUTURE_TOLERANCE + timedelta(microseconds=1))
    assert violations_of(raw) == {"start_time": "is in the future"}


def test_start_far_in_the_future() -> None:
    assert only_violation(encounter_input(start_time=NOW + timedelta(days=1))) == "start_time"


@pytest.mark.parametrize(
    "ahead", [timedelta(0), timedelta(seconds=1), timedelta(minutes=4, seconds=59), FUTURE_TOLERANCE]
)
def test_start_ahead_within_tolerance_is_accepted(ahead: timedelta) -> None:
    assert timedelta(minutes=5) == FUTURE_TOLERANCE
    encounter = validate_encounter(encounter_input(start_time=NOW + ahead), "e", NOW)
    assert encounter.start_time == NOW + ahead


def test_end_in_the_future_beyond_tolerance() -> None:
    raw = encounter_input(start_time=NOW - timedelta(hours=1), end_time=NOW + timedelta(minutes=6))
    assert violations_of(raw) == {"end_time": "is in the future"}


def test_end_within_tolerance_is_accepted() -> None:
    raw = encounter_input(end_time=NOW + FUTURE_TOLERANCE)
    assert validate_encounter(raw, "e", NOW).end_time == NOW + FUTURE_TOLERANCE


def test_start_time_missing() -> None:
    assert only_violation(encounter_input(start_time=None)) == "start_time"


def test_end_time_without_start_time_is_still_checked_for_the_future() -> None:
    raw = encounter_input(start_time=None, end_time=NOW + timedelta(hours=1))
    assert set(violations_of(raw)) == {"start_time", "end_time"}


def test_finished_without_end_time() -> None:
    raw = encounter_input(status=EncounterStatus.FINISHED, end_time=None)
    assert violations_of(raw) == {"end_time": "required when status is FINISHED"}


def test_unknown_encounter_class() -> None:
    assert only_violation(encounter_input(encounter_class=None)) == "encounter_class"


def test_unknown_status() -> None:
    assert only_violation(encounter_input(status=None)) == "status"


def test_reason_too_long() -> None:
    assert only_violation(encounter_input(reason="x" * 1001)) == "reason"


def test_reason_length_is_counted_after_stripping() -> None:
    reason = "y" * 1000
    assert validate_encounter(encounter_input(reason=f"  {reason}\n"), "e", NOW).reason == reason


def test_empty_reason_is_accepted() -> None:
    assert validate_encounter(encounter_input(reason="   "), "e", NOW).reason == ""


@pytest.mark.parametrize("patient_id", ["", "   "])
def test_patient_id_missing(patient_id: str) -> None:
    assert only_violation(encounter_input(patient_id=patient_id)) == "patient_id"


@pytest.mark.parametrize("facility_code", ["", "7900", "790012", "79 01"])
def test_bad_facility_code(facility_code: str) -> None:
    assert only_violation(encounter_input(facility_code=facility_code)) == "facility_code"


@pytest.mark.parametrize("request_id", ["", "  ", "r" * 129, "a\tb"])
def test_bad_request_id(request_id: str) -> None:
    assert only_violation(encounter_input(request_id=request_id)) == "request_id"


def test_all_encounter_violations_at_once() -> None:
    raw = EncounterInput(
        request_id="",
        patient_id="",
        facility_code="x",
        encounter_class=None,
        status=None,
        start_time=NOW + timedelta(hours=1),
        end_time=NOW,
        reason="z" * 1001,
        fingerprint="",
    )
    with pytest.raises(InvalidArgumentError) as caught:
        validate_encounter(raw, "e", NOW)
    assert [v.field for v in caught.value.violations] == [
        "request_id",
        "patient_id",
        "facility_code",
        "encounter_class",
        "status",
        "start_time",
        "end_time",
        "reason",
    ]


# --- plan_feed -------------------------------------------------------------------------------------


def change(sequence: int, age: timedelta = timedelta(0), *, tombstone: bool = False) -> Change:
    return Change(
        sequence=sequence,
        kind=None if tombstone else ChangeKind.CREATED,
        resource_type="Encounter",
        resource_id=f"enc-{sequence}",
        resource_version=1,
        patient_id="patient-1",
        facility_code="79001",
        committed_at=NOW - age,
        tombstone=tombstone,
    )


def sequences(plan: FeedPlan) -> list[int]:
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
