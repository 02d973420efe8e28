"""Unit tests of the audit domain: which event batches are acceptable (pure, no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from emr_audit.domain import (
    MAX_EVENTS_PER_APPEND,
    Action,
    AuditEvent,
    EventType,
    Outcome,
    Subtype,
    event_fields,
    validate_events,
)
from emr_runtime.errors import InvalidArgumentError

OCCURRED = datetime(2024, 6, 15, 8, 30, tzinfo=UTC)


def event(index: int = 0, /, **changes: Any) -> AuditEvent:
    valid = AuditEvent(
        event_id=f"evt-{index:04d}",
        action=Action.READ,
        outcome=Outcome.SUCCESS,
        occurred_at=OCCURRED,
        actor_id="doctor-17",
        actor_facility_code="79001",
        source_service="emr.records",
        operation="/emr.records.v1.RecordsService/GetEncounter",
        patient_id="patient-1",
        resource_type="Encounter",
        resource_id="enc-1",
        purpose_of_use="TREAT",
        request_id="req-1",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    return replace(valid, **changes)


def fields_of(events: list[AuditEvent]) -> list[str]:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_events(events)
    return [v.field for v in caught.value.violations]


def test_valid_batch_is_accepted() -> None:
    validate_events([event(0), event(1, action=Action.CREATE, outcome=Outcome.CLIENT_FAILURE)])


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_action_and_outcome_is_accepted(action: Action, outcome: Outcome) -> None:
    validate_events([event(action=action, outcome=outcome)])


def test_empty_batch() -> None:
    assert fields_of([]) == ["events"]


def test_batch_of_the_maximum_size_is_accepted() -> None:
    assert MAX_EVENTS_PER_APPEND == 500
    validate_events([event(i) for i in range(MAX_EVENTS_PER_APPEND)])


def test_too_many_events() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_events([event(i) for i in range(MAX_EVENTS_PER_APPEND + 1)])
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("events", "at most 500 events per call")
    ]


@pytest.mark.parametrize("event_id", ["", "has space", "évt-1", "a" * 129, "id#1", "id\n"])
def test_bad_event_id(event_id: str) -> None:
    assert fields_of([event(0), event(1, event_id=event_id)]) == ["events[1].event_id"]


@pytest.mark.parametrize("event_id", ["a", "a" * 128, "urn:uuid:5f0c/1_2.3-4", "0"])
def test_good_event_id(event_id: str) -> None:
    validate_events([event(event_id=event_id)])


def test_unknown_action() -> None:
    assert fields_of([event(action=None)]) == ["events[0].action"]


def test_unknown_outcome() -> None:
    assert fields_of([event(outcome=None)]) == ["events[0].outcome"]


def test_missing_occurred_at_is_reported_under_its_request_field_name() -> None:
    assert fields_of([event(occurred_at=None)]) == ["events[0].occurred_time"]


@pytest.mark.parametrize("sequence", [1, 42, -1])
def test_sequence_set_by_client(sequence: int) -> None:
    assert fields_of([event(sequence=sequence)]) == ["events[0].sequence"]


def test_missing_source_service() -> None:
    assert fields_of([event(source_service="")]) == ["events[0].source_service"]


@pytest.mark.parametrize("name", ["actor_id", "patient_id", "resource_id", "request_id", "operation"])
def test_overlong_id_fields(name: str) -> None:
    validate_events([event(**{name: "x" * 256})])
    assert fields_of([event(**{name: "x" * 257})]) == [f"events[0].{name}"]


def test_received_stamps_recorded_at_and_derives_type_without_changing_the_rest() -> None:
    original = event()
    recorded = datetime(2024, 6, 15, 8, 31, tzinfo=UTC)
    received = original.received(recorded)
    assert received.recorded_at == recorded
    assert (received.subtype, received.event_type) == (Subtype.READ, EventType.REST)
    assert original.recorded_at is None
    assert replace(received, recorded_at=None, subtype=None, event_type=None) == original


@pytest.mark.parametrize(
    ("action", "subtype", "expected_subtype", "expected_type"),
    [
        (Action.SEARCH, None, Subtype.SEARCH, EventType.REST),
        (Action.EXPORT, None, Subtype.EXPORT, EventType.EXPORT),
        (Action.UPDATE, Subtype.MERGE, Subtype.MERGE, EventType.REST),
        (Action.EXECUTE, Subtype.LOGIN, Subtype.LOGIN, EventType.USER_AUTHENTICATION),
        (Action.EXECUTE, Subtype.BREAK_GLASS, Subtype.BREAK_GLASS, EventType.EMERGENCY_OVERRIDE),
        (Action.CREATE, Subtype.SHARING_GRANT, Subtype.SHARING_GRANT, EventType.REST),
        (Action.UPDATE, Subtype.SHARING_REVOCATION, Subtype.SHARING_REVOCATION, EventType.REST),
        (Action.CREATE, Subtype.REFERRAL, Subtype.REFERRAL, EventType.REST),
        (Action.EXECUTE, None, None, None),
    ],
)
def test_subtype_and_type_are_derived_only_when_unset(
    action: Action, subtype: Subtype | None, expected_subtype: Subtype | None, expected_type: EventType | None
) -> None:
    received = event(action=action, subtype=subtype).received(OCCURRED)
    assert (received.subtype, received.event_type) == (expected_subtype, expected_type)


def test_every_bad_field_of_every_event_is_reported() -> None:
    events = [
        event(0),
        event(1, event_id="", action=None, outcome=None, occurred_at=None, sequence=3),
        event(2),
        event(3, source_service="", patient_id="p" * 300),
    ]
    assert fields_of(events) == [
        "events[1].event_id",
        "events[1].action",
        "events[1].outcome",
        "events[1].occurred_time",
        "events[1].sequence",
        "events[3].source_service",
        "events[3].patient_id",
    ]


def test_oversized_batch_still_reports_bad_events() -> None:
    events = [event(i) for i in range(MAX_EVENTS_PER_APPEND + 1)]
    events[7] = event(7, action=None)
    assert fields_of(events) == ["events", "events[7].action"]


def test_the_emergency_access_id_is_hashed_only_when_set() -> None:
    """Events stored before the field existed keep the hash they were chained with; an event that
    carries it cannot lose it unnoticed."""
    plain = event(1)
    assert "emergency_access_id" not in event_fields(plain)
    covered = replace(plain, emergency_access_id="e-1", break_glass_reason="EMERGENCY_REASON_URGENT_CARE")
    assert event_fields(covered)["emergency_access_id"] == "e-1"
    assert event_fields(covered) != event_fields(replace(covered, emergency_access_id=""))
