"""Unit tests of data-subject requests (emr_identity.privacy; pure, no I/O): due dates per kind,
the overdue rule against an injected clock, the allowed status changes, which requests the access
model enforces, and what a filing must carry; and the policy's patient role."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from emr_identity.privacy import (
    DEADLINE_DAYS,
    DataSubjectRequest,
    FilingInput,
    RequestKind,
    RequestStatus,
    StatusEvent,
    StatusInput,
    due_time,
    handling_facility,
    new_request,
    next_event,
    overdue_counts,
    sharing_stopped,
    transition_problem,
    validate_filing,
    validate_status_change,
    with_events,
)
from emr_runtime import policy
from emr_runtime.caller import Caller
from emr_runtime.errors import InvalidArgumentError

FILED = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def filing(kind: RequestKind | None, **changes: Any) -> FilingInput:
    raw = FilingInput(
        request_id="req-1",
        patient_id="patient-1",
        kind=kind,
        facility_code="79001",
        data_facility_code="",
        resource_reference="",
        details="",
        sharing_grant_id="",
        fingerprint="fp",
    )
    return replace(raw, **changes)


def request_of(kind: RequestKind, *statuses: RequestStatus) -> DataSubjectRequest:
    request = new_request(
        validate_filing(filing(kind, **_required(kind))), "dsr-1", "patient-1", "clerk", FILED
    )
    events = [
        StatusEvent("dsr-1", number, status, FILED + timedelta(hours=number), "clerk", "79001", "why")
        for number, status in enumerate(statuses, start=2)
    ]
    return with_events(request, [*request.events, *events])


def _required(kind: RequestKind) -> dict[str, str]:
    if kind is RequestKind.CORRECTION:
        return {"data_facility_code": "79002", "details": "the birth year is 1980, not 1908"}
    if kind is RequestKind.WITHDRAWAL:
        return {"sharing_grant_id": "grant-1"}
    return {}


def violated(error: pytest.ExceptionInfo[InvalidArgumentError]) -> set[str]:
    return {violation.field for violation in error.value.violations}


# --- due dates and overdue -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "days"),
    [
        (RequestKind.ACCESS, 10),
        (RequestKind.CORRECTION, 10),
        (RequestKind.RESTRICTION, 15),
        (RequestKind.OBJECTION, 15),
        (RequestKind.WITHDRAWAL, 15),
    ],
)
def test_the_due_time_is_the_deadline_of_the_kind_after_filing(kind: RequestKind, days: int) -> None:
    assert due_time(kind, FILED) == FILED + timedelta(days=days)
    assert request_of(kind).due_at == FILED + timedelta(days=days)


def test_every_kind_has_a_deadline() -> None:
    assert set(DEADLINE_DAYS) == set(RequestKind)


def test_an_open_request_is_overdue_only_after_its_due_time() -> None:
    request = request_of(RequestKind.ACCESS)
    assert not request.overdue_at(request.due_at)
    assert request.overdue_at(request.due_at + timedelta(seconds=1))
    assert request_of(RequestKind.ACCESS, RequestStatus.IN_PROGRESS).overdue_at(
        request.due_at + timedelta(days=1)
    )


@pytest.mark.parametrize("final", [RequestStatus.COMPLETED, RequestStatus.REFUSED])
def test_a_closed_request_is_never_overdue(final: RequestStatus) -> None:
    request = request_of(RequestKind.CORRECTION, RequestStatus.IN_PROGRESS, final)
    assert not request.overdue_at(request.due_at + timedelta(days=365))


def test_overdue_counts_are_per_kind_with_every_kind_present() -> None:
    late = FILED + timedelta(days=12)  # past the 10-day deadlines, within the 15-day ones
    counts = overdue_counts(
        [
            request_of(RequestKind.ACCESS),
            request_of(RequestKind.ACCESS, RequestStatus.IN_PROGRESS),
            request_of(RequestKind.ACCESS, RequestStatus.COMPLETED),
            request_of(RequestKind.CORRECTION),
            request_of(RequestKind.OBJECTION),
        ],
        late,
    )
    assert counts == {
        RequestKind.ACCESS: 2,
        RequestKind.CORRECTION: 1,
        RequestKind.RESTRICTION: 0,
        RequestKind.OBJECTION: 0,
        RequestKind.WITHDRAWAL: 0,
    }


# --- status changes ------------------------------------------------------------------------------


def test_a_new_request_is_received_with_one_event() -> None:
    request = request_of(RequestKind.ACCESS)
    assert request.status is RequestStatus.RECEIVED
    assert [(e.number, e.status) for e in request.events] == [(1, RequestStatus.RECEIVED)]


@pytest.mark.parametrize(
    ("current", "wanted", "allowed"),
    [
        (RequestStatus.RECEIVED, RequestStatus.IN_PROGRESS, True),
        (RequestStatus.RECEIVED, RequestStatus.COMPLETED, True),
        (RequestStatus.RECEIVED, RequestStatus.REFUSED, True),
        (RequestStatus.IN_PROGRESS, RequestStatus.COMPLETED, True),
        (RequestStatus.IN_PROGRESS, RequestStatus.REFUSED, True),
        (RequestStatus.IN_PROGRESS, RequestStatus.IN_PROGRESS, False),
        (RequestStatus.COMPLETED, RequestStatus.REFUSED, False),
        (RequestStatus.COMPLETED, RequestStatus.IN_PROGRESS, False),
        (RequestStatus.REFUSED, RequestStatus.COMPLETED, False),
    ],
)
def test_status_changes_follow_the_transitions(
    current: RequestStatus, wanted: RequestStatus, allowed: bool
) -> None:
    assert (transition_problem(current, current, wanted) == "") is allowed


def test_a_change_from_a_status_the_caller_did_not_see_is_refused() -> None:
    problem = transition_problem(RequestStatus.IN_PROGRESS, RequestStatus.RECEIVED, RequestStatus.COMPLETED)
    assert "IN_PROGRESS" in problem


def test_the_next_event_takes_the_next_number() -> None:
    request = request_of(RequestKind.ACCESS, RequestStatus.IN_PROGRESS)
    change = StatusInput(
        "call-1", "dsr-1", RequestStatus.IN_PROGRESS, RequestStatus.COMPLETED, "", "79001", "f"
    )
    event = next_event(request, change, "clerk-2", FILED + timedelta(days=1))
    assert (event.number, event.status, event.actor_id) == (3, RequestStatus.COMPLETED, "clerk-2")


def test_history_stops_at_a_gap_in_the_event_numbers() -> None:
    request = request_of(RequestKind.ACCESS)
    stray = StatusEvent("dsr-1", 3, RequestStatus.COMPLETED, FILED, "x", "", "")
    assert [e.number for e in with_events(request, [*request.events, stray]).events] == [1]


def test_a_refusal_needs_a_reason_and_received_is_not_a_target() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validate_status_change(
            StatusInput("call-1", "dsr-1", RequestStatus.RECEIVED, RequestStatus.REFUSED, " ", "", "f")
        )
    assert violated(error) == {"reason"}
    with pytest.raises(InvalidArgumentError) as error:
        validate_status_change(StatusInput("", "", None, RequestStatus.RECEIVED, "", "7900", "f"))
    assert violated(error) == {
        "request_id",
        "data_subject_request_id",
        "expected_status",
        "status",
        "facility_code",
    }


# --- enforcement ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [RequestKind.RESTRICTION, RequestKind.OBJECTION])
def test_a_restriction_or_objection_stops_sharing_until_refused(kind: RequestKind) -> None:
    assert sharing_stopped([request_of(kind)])
    assert sharing_stopped([request_of(kind, RequestStatus.IN_PROGRESS, RequestStatus.COMPLETED)])
    assert not sharing_stopped([request_of(kind, RequestStatus.REFUSED)])


@pytest.mark.parametrize("kind", [RequestKind.ACCESS, RequestKind.CORRECTION, RequestKind.WITHDRAWAL])
def test_other_kinds_never_stop_sharing(kind: RequestKind) -> None:
    assert not sharing_stopped([request_of(kind)])


# --- filing --------------------------------------------------------------------------------------


def test_a_correction_goes_to_the_facility_holding_the_data() -> None:
    raw = validate_filing(filing(RequestKind.CORRECTION, **_required(RequestKind.CORRECTION)))
    assert handling_facility(raw) == "79002"
    assert handling_facility(validate_filing(filing(RequestKind.ACCESS))) == "79001"
    assert handling_facility(validate_filing(filing(RequestKind.ACCESS, facility_code=""))) == ""


def test_a_correction_needs_the_data_facility_and_what_to_correct() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validate_filing(filing(RequestKind.CORRECTION, resource_reference="Nonsense/1"))
    assert violated(error) == {"data_facility_code", "details", "resource_reference"}


def test_a_withdrawal_needs_the_grant_and_other_kinds_refuse_correction_fields() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validate_filing(filing(RequestKind.WITHDRAWAL))
    assert violated(error) == {"sharing_grant_id"}
    with pytest.raises(InvalidArgumentError) as error:
        validate_filing(
            filing(
                RequestKind.OBJECTION,
                data_facility_code="79002",
                resource_reference="Encounter/e-1",
                sharing_grant_id="grant-1",
            )
        )
    assert violated(error) == {"data_facility_code", "resource_reference", "sharing_grant_id"}


def test_a_filing_without_kind_or_patient_names_both() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validate_filing(filing(None, patient_id=" ", facility_code="x"))
    assert violated(error) == {"kind", "patient_id", "facility_code"}


# --- the patient role in the policy --------------------------------------------------------------

EXPORT = "/emr.records.v1.ClinicalRecordsService/ExportPatient"
FILE = "/emr.identity.v1.PrivacyRequestService/FileDataSubjectRequest"


def patient_caller(patient_id: str = "patient-1") -> Caller:
    return Caller("app-user", "", "", roles=(policy.PATIENT,), patient_id=patient_id)


@pytest.mark.parametrize("method", [EXPORT, FILE])
def test_a_patient_token_may_act_for_its_own_patient_only(method: str) -> None:
    own = policy.decide(method, patient_caller(), SimpleNamespace(patient_id="patient-1", facility_code=""))
    assert own.allowed and not own.facility_scoped and own.role == policy.PATIENT
    other = policy.decide(method, patient_caller(), SimpleNamespace(patient_id="patient-2", facility_code=""))
    assert not other.allowed


@pytest.mark.parametrize(
    "method",
    [
        "/emr.identity.v1.PatientIdentityService/GetPatient",
        "/emr.records.v1.ClinicalRecordsService/GetEncounter",
        "/emr.identity.v1.PrivacyRequestService/UpdateDataSubjectRequestStatus",
        "/emr.audit.v1.AuditService/GetPublicKey",
    ],
)
def test_a_patient_token_is_refused_everything_else(method: str) -> None:
    request = SimpleNamespace(patient_id="patient-1", facility_code="")
    assert not policy.decide(method, patient_caller(), request).allowed


def test_a_patient_role_without_a_patient_claim_is_refused() -> None:
    request = SimpleNamespace(patient_id="", facility_code="")
    assert not policy.decide(EXPORT, patient_caller(""), request).allowed
