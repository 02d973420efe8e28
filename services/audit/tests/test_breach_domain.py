"""Unit tests of the breach workflow domain: the 72-hour deadline, the status rules, what a breach
touched (computed from audit events) and the notification content (pure, no I/O)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emr_audit.breach import (
    Category,
    DeadlineState,
    ImpactTally,
    Incident,
    IncidentState,
    Scope,
    Status,
    StatusChange,
    StatusRequest,
    TransitionRefusedError,
    next_change,
    notification_document,
    notification_text,
    validate_incident,
)
from emr_audit.domain import Action, AuditEvent, Entity, EntityRole, Outcome, Subtype
from emr_runtime.errors import InvalidArgumentError

DISCOVERED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DEADLINE = DISCOVERED + timedelta(hours=72)


def incident(**changes: Any) -> Incident:
    valid = Incident(
        incident_id="inc-1",
        category=Category.CONFIDENTIALITY,
        description="A clerk's account read patient records it had no reason to read.",
        occurred_at=DISCOVERED - timedelta(days=2),
        discovered_at=DISCOVERED,
        reported_by="IT security desk",
        scope=Scope(actor_id="clerk-9"),
        contact_point="DPO, dpo@hospital.example, 028 0000 0000",
        likely_consequences="Disclosure of diagnoses.",
        measures_taken="Account disabled; passwords reset.",
    )
    return replace(valid, **changes)


def event(sequence: int, patient_id: str, **changes: Any) -> AuditEvent:
    valid = AuditEvent(
        event_id=f"evt-{sequence}",
        action=Action.READ,
        outcome=Outcome.SUCCESS,
        occurred_at=DISCOVERED - timedelta(hours=10 - sequence),
        actor_id="clerk-9",
        actor_facility_code="79001",
        source_service="records",
        operation="/emr.records.v1.ClinicalRecordsService/GetEncounter",
        patient_id=patient_id,
        resource_type="Encounter",
        resource_id=f"enc-{sequence}",
        purpose_of_use="TREATMENT",
        request_id="",
        trace_id="",
        sequence=sequence,
        subtype=Subtype.READ,
    )
    return replace(valid, **changes)


def violated(error: pytest.ExceptionInfo[InvalidArgumentError]) -> set[str]:
    return {violation.field for violation in error.value.violations}


# --- the incident ---------------------------------------------------------------------------------


def test_a_valid_incident_passes() -> None:
    validate_incident(incident(), DISCOVERED + timedelta(hours=1))


def test_an_incident_without_scope_category_or_discovery_names_each_field() -> None:
    bad = incident(category=None, scope=Scope(), discovered_at=None, description=" ", contact_point="")
    with pytest.raises(InvalidArgumentError) as error:
        validate_incident(bad, DISCOVERED)
    assert violated(error) == {"category", "scope", "discovered_time", "description", "contact_point"}


def test_discovery_in_the_future_or_occurrence_after_discovery_is_refused() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validate_incident(
            incident(occurred_at=DISCOVERED + timedelta(hours=1)), DISCOVERED - timedelta(days=1)
        )
    assert violated(error) == {"discovered_time", "occurred_time"}


def test_a_scope_window_must_end_after_it_starts_and_a_facility_must_be_a_code() -> None:
    scope = Scope(facility_code="bad", start=DISCOVERED, end=DISCOVERED)
    with pytest.raises(InvalidArgumentError) as error:
        validate_incident(incident(scope=scope), DISCOVERED)
    assert violated(error) == {"scope.facility_code", "scope.end_time"}


def test_control_characters_in_free_text_are_refused() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validate_incident(incident(description="line\x00break"), DISCOVERED)
    assert violated(error) == {"description"}
    validate_incident(incident(description="two\nlines\tand a tab"), DISCOVERED)


# --- the deadline ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hours_after_discovery", "expected"),
    [
        (0, DeadlineState.PENDING),
        (47.9, DeadlineState.PENDING),
        (48, DeadlineState.DUE_SOON),
        (72, DeadlineState.DUE_SOON),
        (72.01, DeadlineState.OVERDUE),
        (500, DeadlineState.OVERDUE),
    ],
)
def test_an_open_incident_is_pending_then_due_soon_then_overdue(
    hours_after_discovery: float, expected: DeadlineState
) -> None:
    state = IncidentState(incident())
    assert state.incident.deadline == DEADLINE
    assert state.deadline_state(DISCOVERED + timedelta(hours=hours_after_discovery)) is expected


def notified(at: datetime, delay_reason: str = "") -> StatusChange:
    return StatusChange(1, Status.NOTIFIED, at, "dpo-1", notified_at=at, delay_reason=delay_reason)


def test_a_notification_within_72_hours_meets_the_deadline_one_after_misses_it() -> None:
    on_time = IncidentState(incident(), (notified(DEADLINE),))
    late = IncidentState(incident(), (notified(DEADLINE + timedelta(minutes=1), "forensics"),))
    later = DEADLINE + timedelta(days=30)
    assert on_time.deadline_state(later) is DeadlineState.MET
    assert late.deadline_state(later) is DeadlineState.MISSED


def test_closing_without_a_notification_is_not_notified_and_no_longer_alerted() -> None:
    closed = StatusChange(1, Status.CLOSED, DISCOVERED, "dpo-1", note="no personal data involved")
    state = IncidentState(incident(), (closed,))
    assert state.status is Status.CLOSED
    assert state.deadline_state(DEADLINE + timedelta(days=1)) is DeadlineState.NOT_NOTIFIED


# --- status rules ---------------------------------------------------------------------------------


def test_open_to_notified_to_closed() -> None:
    state = IncidentState(incident())
    now = DISCOVERED + timedelta(hours=5)
    first = next_change(state, StatusRequest(Status.NOTIFIED, authority_reference="A05-123"), "dpo-1", now)
    assert (first.position, first.status, first.notified_at, first.changed_by) == (
        1,
        Status.NOTIFIED,
        now,
        "dpo-1",
    )
    state = replace(state, history=(first,))
    second = next_change(state, StatusRequest(Status.CLOSED), "dpo-1", now)
    assert (second.position, second.status) == (2, Status.CLOSED)
    state = replace(state, history=(first, second))
    with pytest.raises(TransitionRefusedError):
        next_change(state, StatusRequest(Status.CLOSED, note="again"), "dpo-1", now)
    with pytest.raises(TransitionRefusedError):
        next_change(state, StatusRequest(Status.NOTIFIED), "dpo-1", now)


def test_notified_twice_is_refused() -> None:
    state = IncidentState(incident(), (notified(DISCOVERED + timedelta(hours=1)),))
    with pytest.raises(TransitionRefusedError):
        next_change(state, StatusRequest(Status.NOTIFIED), "dpo-1", DISCOVERED + timedelta(hours=2))


@pytest.mark.parametrize("status", [None, Status.OPEN])
def test_the_target_status_must_be_notified_or_closed(status: Status | None) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        next_change(IncidentState(incident()), StatusRequest(status), "dpo-1", DISCOVERED)
    assert violated(error) == {"status"}


def test_closing_an_unnotified_incident_needs_a_note() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        next_change(IncidentState(incident()), StatusRequest(Status.CLOSED), "dpo-1", DISCOVERED)
    assert violated(error) == {"note"}


def test_a_late_notification_needs_the_reasons_for_the_delay() -> None:
    now = DEADLINE + timedelta(hours=3)
    with pytest.raises(InvalidArgumentError) as error:
        next_change(IncidentState(incident()), StatusRequest(Status.NOTIFIED), "dpo-1", now)
    assert violated(error) == {"delay_reason"}
    change = next_change(
        IncidentState(incident()), StatusRequest(Status.NOTIFIED, delay_reason="scope unclear"), "dpo-1", now
    )
    assert change.delay_reason == "scope unclear"


def test_a_notification_time_before_discovery_or_in_the_future_is_refused() -> None:
    now = DISCOVERED + timedelta(hours=1)
    for moment in (DISCOVERED - timedelta(seconds=1), now + timedelta(hours=1)):
        with pytest.raises(InvalidArgumentError) as error:
            next_change(
                IncidentState(incident()), StatusRequest(Status.NOTIFIED, notified_at=moment), "d", now
            )
        assert violated(error) == {"notified_time"}


def test_notification_fields_on_a_closing_change_are_refused() -> None:
    request = StatusRequest(Status.CLOSED, authority_reference="x", delay_reason="y", note="z")
    with pytest.raises(InvalidArgumentError) as error:
        next_change(IncidentState(incident()), request, "dpo-1", DISCOVERED)
    assert violated(error) == {"authority_reference", "delay_reason"}


# --- what the breach touched ----------------------------------------------------------------------


def test_the_tally_counts_every_patient_an_event_refers_to_and_only_successful_accesses() -> None:
    events = [
        event(1, "p-1"),
        event(2, "p-1", subtype=Subtype.SEARCH, resource_type="Observation", resource_id="obs-1"),
        event(3, "p-2", resource_id="enc-1"),  # the same record as event 1: counted once
        event(
            4,
            "",
            resource_id="",
            entities=(Entity(EntityRole.PATIENT, patient_id="p-3", resource_type="Patient"),),
        ),
        event(5, "p-4", outcome=Outcome.CLIENT_FAILURE),  # refused: disclosed nothing
        event(6, ""),  # no patient at all
    ]
    tally = ImpactTally().feed_all(events)
    assert [p.patient_id for p in tally.patients()] == ["p-1", "p-2", "p-3"]
    assert (tally.patient_count, tally.access_events) == (3, 4)
    assert tally.record_count == 2  # enc-1 (read twice) and obs-1; event 4 names no record id
    assert tally.data_categories == ["Encounter", "Observation", "Patient"]
    first = tally.patients()[0]
    assert (first.first_at, first.last_at) == (events[0].occurred_at, events[1].occurred_at)
    assert first.access_kinds == (Subtype.READ, Subtype.SEARCH)
    assert (first.access_count, first.data_categories) == (2, ("Encounter", "Observation"))


def test_patients_page_after_an_id() -> None:
    tally = ImpactTally().feed_all(event(i, f"p-{i}") for i in range(1, 6))
    assert [p.patient_id for p in tally.patients("p-2", 2)] == ["p-3", "p-4"]
    assert tally.patients("p-5") == []


# --- the notification -----------------------------------------------------------------------------


def test_the_notification_carries_what_the_law_asks_and_the_counts() -> None:
    tally = ImpactTally().feed_all([event(1, "p-1"), event(2, "p-2", resource_id="enc-9")])
    now = DISCOVERED + timedelta(hours=2)
    document = notification_document(IncidentState(incident()), tally, now)
    json.dumps(document)  # serializable as is
    assert document["data_subjects"] == {"categories": ["patients"], "approximate_number": 2}
    assert document["personal_data"]["approximate_number_of_records"] == 2
    assert document["personal_data"]["categories"] == ["Encounter"]
    assert document["nature"]["category"] == "confidentiality"
    assert document["nature"]["description"] == incident().description
    assert document["nature"]["scope"]["actor_id"] == "clerk-9"
    assert document["contact_point"] == incident().contact_point
    assert document["likely_consequences"] == "Disclosure of diagnoses."
    assert document["measures_taken_or_proposed"] == "Account disabled; passwords reset."
    assert document["notification_deadline"] == DEADLINE.isoformat()
    assert document["deadline_state"] == "pending"
    assert document["reasons_for_delay"] is None
    assert "A05" in document["recipient"] and "72 hours" in document["legal_basis"]
    text = notification_text(document)
    assert "Approximate number of data subjects: 2" in text
    assert "Approximate number of records: 2" in text
    assert "Contact point: DPO, dpo@hospital.example" in text
    assert "Reasons for the delay: none: within the deadline" in text


def test_a_late_notification_needs_and_carries_the_reasons_for_the_delay() -> None:
    state = IncidentState(incident())
    now = DEADLINE + timedelta(hours=1)
    with pytest.raises(InvalidArgumentError) as error:
        notification_document(state, ImpactTally(), now)
    assert violated(error) == {"delay_reason"}
    document = notification_document(state, ImpactTally(), now, "the scope took days to establish")
    assert document["reasons_for_delay"] == "the scope took days to establish"
    assert "Reasons for the delay: the scope took days to establish" in notification_text(document)
    # Once notified late, the reason given then is the notification's.
    late = IncidentState(incident(), (notified(now, "forensics first"),))
    assert notification_document(late, ImpactTally(), now)["reasons_for_delay"] == "forensics first"
