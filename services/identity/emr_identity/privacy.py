"""Data-subject requests (Law 91/2025/QH15 on personal data protection, Decree 356/2025/ND-CP): what
may be filed, when the answer is due, which status changes are allowed, and which requests the
access model enforces. Pure; no I/O (the clock is a parameter).

A request's status is the newest of its insert-only status events: nothing is ever updated in
place (FerretDB applies updates non-atomically), and a status change is a compare-and-set insert of
the next event number.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from emr_identity.sharing import check_id, check_text
from emr_runtime.errors import Violations
from emr_runtime.facility import is_facility_code, normalize_facility_code
from emr_runtime.idempotency import check_request_id

MAX_DETAILS_LENGTH = 2000
MAX_REASON_LENGTH = 2000
MAX_REFERENCE_LENGTH = 140
RESOURCE_TYPES = frozenset(
    {
        "Patient",
        "Encounter",
        "Observation",
        "Condition",
        "MedicationRequest",
        "Procedure",
        "DocumentReference",
    }
)


class RequestKind(enum.Enum):
    ACCESS = "access"
    CORRECTION = "correction"
    RESTRICTION = "restriction"
    OBJECTION = "objection"
    WITHDRAWAL = "withdrawal"


class RequestStatus(enum.Enum):
    RECEIVED = "received"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    REFUSED = "refused"

    @property
    def is_open(self) -> bool:
        return self in (RequestStatus.RECEIVED, RequestStatus.IN_PROGRESS)


# The legal deadline of each kind, counted in calendar days from filing: the ONE place they live.
# Decree 356/2025/ND-CP (as secondary sources summarise it; article not verified): an answer to the
# data subject within 2 working days; a withdrawal of consent, a restriction or an objection carried
# out within 15 days (20 when a processor or third party must stop too; one extension of at most 15
# days). Access and correction: 10 days (the project's reading of "10 to 20 days"; not verified).
DEADLINE_DAYS: dict[RequestKind, int] = {
    RequestKind.ACCESS: 10,
    RequestKind.CORRECTION: 10,
    RequestKind.RESTRICTION: 15,
    RequestKind.OBJECTION: 15,
    RequestKind.WITHDRAWAL: 15,
}
# The kinds the access model enforces while they are not refused: they stop sharing.
SHARING_STOPPERS = frozenset({RequestKind.RESTRICTION, RequestKind.OBJECTION})
# Allowed status changes; COMPLETED and REFUSED are final.
TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    RequestStatus.RECEIVED: frozenset(
        {RequestStatus.IN_PROGRESS, RequestStatus.COMPLETED, RequestStatus.REFUSED}
    ),
    RequestStatus.IN_PROGRESS: frozenset({RequestStatus.COMPLETED, RequestStatus.REFUSED}),
    RequestStatus.COMPLETED: frozenset(),
    RequestStatus.REFUSED: frozenset(),
}


def due_time(kind: RequestKind, filed_at: datetime) -> datetime:
    """When the answer to a request of ``kind`` filed at ``filed_at`` is due."""
    return filed_at + timedelta(days=DEADLINE_DAYS[kind])


@dataclass(frozen=True)
class StatusEvent:
    """One status change: the n-th event of a request (1: RECEIVED at filing)."""

    request_id: str
    number: int
    status: RequestStatus
    occurred_at: datetime
    actor_id: str
    facility_code: str
    reason: str
    # The idempotency key and fingerprint of the call that inserted it.
    call_request_id: str = ""
    call_fingerprint: str = ""


@dataclass(frozen=True)
class DataSubjectRequest:
    """A request as filed (fixed) with its history (``events``, oldest first)."""

    request_id: str
    kind: RequestKind
    patient_id: str
    filed_by: str
    filed_by_facility_code: str
    handling_facility_code: str
    filed_at: datetime
    due_at: datetime
    resource_reference: str
    details: str
    sharing_grant_id: str
    request_fingerprint: str
    events: tuple[StatusEvent, ...] = ()

    @property
    def status(self) -> RequestStatus:
        return self.events[-1].status if self.events else RequestStatus.RECEIVED

    def overdue_at(self, now: datetime) -> bool:
        """Open past its due time."""
        return self.status.is_open and now > self.due_at

    @property
    def stops_sharing(self) -> bool:
        """Whether the access model enforces it now: a restriction or objection not refused."""
        return self.kind in SHARING_STOPPERS and self.status is not RequestStatus.REFUSED


def sharing_stopped(requests: Iterable[DataSubjectRequest]) -> bool:
    """Whether any of a patient's requests stops sharing between facilities."""
    return any(request.stops_sharing for request in requests)


def overdue_counts(requests: Iterable[DataSubjectRequest], now: datetime) -> dict[RequestKind, int]:
    """Open requests past due, per kind (every kind present, 0 when none)."""
    counts = dict.fromkeys(RequestKind, 0)
    for request in requests:
        if request.overdue_at(now):
            counts[request.kind] += 1
    return counts


# --- requests as received -------------------------------------------------------------------------


@dataclass(frozen=True)
class FilingInput:
    """A FileDataSubjectRequest request; ``kind`` None when unset or unknown."""

    request_id: str
    patient_id: str
    kind: RequestKind | None
    facility_code: str
    data_facility_code: str
    resource_reference: str
    details: str
    sharing_grant_id: str
    fingerprint: str


@dataclass(frozen=True)
class StatusInput:
    """An UpdateDataSubjectRequestStatus request; statuses None when unset or unknown."""

    request_id: str
    data_subject_request_id: str
    expected_status: RequestStatus | None
    status: RequestStatus | None
    reason: str
    facility_code: str
    fingerprint: str


def _check_reference(violations: Violations, value: str) -> str:
    value = value.strip()
    if not value:
        return ""
    kind, _, resource_id = value.partition("/")
    if (
        len(value) > MAX_REFERENCE_LENGTH
        or kind not in RESOURCE_TYPES
        or not resource_id
        or not resource_id.isprintable()
        or "/" in resource_id
    ):
        violations.add(
            "resource_reference", f"empty or '<ResourceType>/<id>' with a type of {sorted(RESOURCE_TYPES)}"
        )
    return value


def validate_filing(raw: FilingInput) -> FilingInput:
    """Checks every field of a filing, reporting all violations at once; the normalised input."""
    violations = Violations()
    check_request_id(violations, raw.request_id)
    patient_id = check_id(violations, raw.patient_id, "patient_id")
    if raw.kind is None:
        violations.add("kind", "required: ACCESS, CORRECTION, RESTRICTION, OBJECTION or WITHDRAWAL")
    facility_code = normalize_facility_code(raw.facility_code)
    if facility_code and not is_facility_code(facility_code):
        violations.add("facility_code", "empty (a patient's own token) or the registrar's 5-character code")
    data_facility = normalize_facility_code(raw.data_facility_code)
    reference = _check_reference(violations, raw.resource_reference)
    details = check_text(violations, raw.details, "details", MAX_DETAILS_LENGTH)
    grant_id = check_id(
        violations, raw.sharing_grant_id, "sharing_grant_id", required=raw.kind is RequestKind.WITHDRAWAL
    )
    if raw.kind is RequestKind.CORRECTION:
        if not is_facility_code(data_facility):
            violations.add("data_facility_code", "required for CORRECTION: the facility holding the data")
        if not details and not violations.has("details"):
            violations.add("details", "required for CORRECTION: what to correct")
    else:
        if data_facility:
            violations.add("data_facility_code", "only for CORRECTION")
        if reference:
            violations.add("resource_reference", "only for CORRECTION")
    if raw.kind is not RequestKind.WITHDRAWAL and grant_id:
        violations.add("sharing_grant_id", "only for WITHDRAWAL")
    violations.raise_if_any()
    return replace(
        raw,
        patient_id=patient_id,
        facility_code=facility_code,
        data_facility_code=data_facility,
        resource_reference=reference,
        details=details,
        sharing_grant_id=grant_id,
    )


def handling_facility(raw: FilingInput) -> str:
    """Who answers: a correction goes to the facility holding the data; anything else to the filing
    facility, or (a patient's own filing) to the platform's data-protection officer ("")."""
    return raw.data_facility_code if raw.kind is RequestKind.CORRECTION else raw.facility_code


def new_request(
    raw: FilingInput, request_id: str, patient_id: str, actor_id: str, now: datetime
) -> DataSubjectRequest:
    """The request a validated filing records for ``patient_id`` (the id it resolves to); its first
    event (RECEIVED) is part of it."""
    assert raw.kind is not None  # validate_filing checked it
    return DataSubjectRequest(
        request_id=request_id,
        kind=raw.kind,
        patient_id=patient_id,
        filed_by=actor_id,
        filed_by_facility_code=raw.facility_code,
        handling_facility_code=handling_facility(raw),
        filed_at=now,
        due_at=due_time(raw.kind, now),
        resource_reference=raw.resource_reference,
        details=raw.details,
        sharing_grant_id=raw.sharing_grant_id,
        request_fingerprint=raw.fingerprint,
        events=(
            StatusEvent(
                request_id,
                1,
                RequestStatus.RECEIVED,
                now,
                actor_id,
                raw.facility_code,
                "",
                raw.request_id,
                raw.fingerprint,
            ),
        ),
    )


def validate_status_change(raw: StatusInput) -> StatusInput:
    violations = Violations()
    check_request_id(violations, raw.request_id)
    request_id = check_id(violations, raw.data_subject_request_id, "data_subject_request_id")
    if raw.expected_status is None:
        violations.add("expected_status", "required: the status the caller saw")
    if raw.status is None or raw.status is RequestStatus.RECEIVED:
        violations.add("status", "required: IN_PROGRESS, COMPLETED or REFUSED")
    reason = check_text(violations, raw.reason, "reason", MAX_REASON_LENGTH)
    if raw.status is RequestStatus.REFUSED and not reason and not violations.has("reason"):
        violations.add("reason", "required for REFUSED: why the request is refused")
    facility_code = normalize_facility_code(raw.facility_code)
    if facility_code and not is_facility_code(facility_code):
        violations.add("facility_code", "empty (an auditor) or the registrar's 5-character code")
    violations.raise_if_any()
    return replace(raw, data_subject_request_id=request_id, reason=reason, facility_code=facility_code)


def transition_problem(current: RequestStatus, expected: RequestStatus, wanted: RequestStatus) -> str:
    """Why a status change may not happen ("" when it may): the caller saw another status, or the
    change is not allowed from the current one."""
    if current is not expected:
        return f"the request is {current.name}, not {expected.name}: read it again"
    if wanted not in TRANSITIONS[current]:
        return f"a {current.name} request cannot become {wanted.name}"
    return ""


def next_event(request: DataSubjectRequest, raw: StatusInput, actor_id: str, now: datetime) -> StatusEvent:
    """The event a validated, allowed status change inserts (number: one after the newest)."""
    assert raw.status is not None
    return StatusEvent(
        request_id=request.request_id,
        number=len(request.events) + 1,
        status=raw.status,
        occurred_at=now,
        actor_id=actor_id,
        facility_code=raw.facility_code,
        reason=raw.reason,
        call_request_id=raw.request_id,
        call_fingerprint=raw.fingerprint,
    )


def completion_event(
    request: DataSubjectRequest, actor_id: str, facility_code: str, now: datetime
) -> StatusEvent:
    """The event completing a request the platform carries out at filing (a withdrawal)."""
    return StatusEvent(
        request.request_id, 2, RequestStatus.COMPLETED, now, actor_id, facility_code, "", "", ""
    )


def with_events(request: DataSubjectRequest, events: Sequence[StatusEvent]) -> DataSubjectRequest:
    """The request with its history: the events numbered 1, 2, ... without a gap."""
    ordered = sorted(events, key=lambda e: e.number)
    kept = [event for index, event in enumerate(ordered, start=1) if event.number == index]
    return replace(request, events=tuple(kept) or request.events)
