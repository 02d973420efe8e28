"""Breach workflow domain: an incident, its status rules, the 72-hour notification deadline, the
patients and records a breach touched (computed from audit events) and the notification to the
personal data protection authority. Pure; no I/O.

The free text of an incident (description, consequences, measures, notes) may describe patients:
it is stored and returned to the data-protection officer, never logged or put in metrics."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from emr_audit.domain import AuditEvent, EventFilter, Outcome, Subtype
from emr_runtime.errors import DomainError, FieldViolation, InvalidArgumentError, Violations
from emr_runtime.facility import is_facility_code

# Law 91/2025/QH15 and Decree 356/2025/NĐ-CP: the authority is notified within 72 hours of discovery.
NOTIFICATION_WINDOW = timedelta(hours=72)
# An unnotified incident this close to its deadline is "due soon" (alerted, ticket).
DUE_SOON_WINDOW = timedelta(hours=24)
# Clocks of the caller and the service differ a little: a time this far ahead still counts as now.
CLOCK_SKEW = timedelta(minutes=2)
MAX_TEXT = 4000
MAX_SHORT_TEXT = 200
MAX_CONTACT = 500
MAX_ID = 256
AUTHORITY = (
    "Cục An ninh mạng và phòng, chống tội phạm sử dụng công nghệ cao (A05), Bộ Công an "
    "(personal data protection authority, Ministry of Public Security)"
)
LEGAL_BASIS = (
    "Law 91/2025/QH15 on personal data protection and Decree 356/2025/NĐ-CP: notification of a "
    "personal data protection violation within 72 hours of discovery (article not verified)"
)
DATA_SUBJECT_CATEGORY = "patients"


class Category(enum.Enum):
    CONFIDENTIALITY = "confidentiality"
    INTEGRITY = "integrity"
    AVAILABILITY = "availability"


class Status(enum.Enum):
    OPEN = "open"
    NOTIFIED = "notified"
    CLOSED = "closed"


class DeadlineState(enum.Enum):
    PENDING = "pending"
    DUE_SOON = "due_soon"
    OVERDUE = "overdue"
    MET = "met"
    MISSED = "missed"
    NOT_NOTIFIED = "not_notified"


# What the unnotified-incidents gauge counts.
ALERTED_DEADLINE_STATES = (DeadlineState.DUE_SOON, DeadlineState.OVERDUE)


class TransitionRefusedError(DomainError):
    """The status change does not follow from the incident's current status (FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class Scope:
    """Which audit events are the breach: every field given must match."""

    actor_id: str = ""
    facility_code: str = ""
    start: datetime | None = None
    end: datetime | None = None

    def event_filter(self) -> EventFilter:
        return EventFilter(
            actor_id=self.actor_id, facility_code=self.facility_code, start=self.start, end=self.end
        )

    def validate(self, violations: Violations) -> None:
        if not (self.actor_id or self.facility_code or self.start or self.end):
            violations.add("scope", "required: an actor_id, a facility_code or a time window")
        if len(self.actor_id) > MAX_ID or (self.actor_id and not self.actor_id.isprintable()):
            violations.add("scope.actor_id", f"at most {MAX_ID} printable characters")
        if self.facility_code and not is_facility_code(self.facility_code):
            violations.add("scope.facility_code", "a facility code: 5 digits or capital letters")
        if self.start and self.end and self.end <= self.start:
            violations.add("scope.end_time", "must be after scope.start_time")


@dataclass(frozen=True)
class Incident:
    """What was recorded; never changed afterwards (status changes are separate entries)."""

    incident_id: str
    category: Category | None
    description: str
    occurred_at: datetime | None
    discovered_at: datetime | None
    reported_by: str
    scope: Scope
    contact_point: str
    likely_consequences: str
    measures_taken: str
    recorded_by: str = ""
    recorded_at: datetime | None = None

    @property
    def deadline(self) -> datetime:
        assert self.discovered_at is not None  # only validated incidents are stored
        return notification_deadline(self.discovered_at)

    def same_request(self, other: Incident) -> bool:
        """Whether ``other`` (a retry) asks for the same incident as this one."""
        return _request_fields(self) == _request_fields(other)


def _request_fields(incident: Incident) -> tuple[Any, ...]:
    return (
        incident.category,
        incident.description,
        incident.occurred_at,
        incident.discovered_at,
        incident.reported_by,
        incident.scope,
        incident.contact_point,
        incident.likely_consequences,
        incident.measures_taken,
    )


def _check_text(violations: Violations, name: str, value: str, maximum: int, required: bool = False) -> None:
    if required and not value.strip():
        violations.add(name, f"required: 1 to {maximum} characters")
    elif len(value) > maximum:
        violations.add(name, f"at most {maximum} characters")
    elif any(not (c.isprintable() or c in "\n\t") for c in value):
        violations.add(name, "must be printable text (line breaks and tabs allowed)")


def validate_incident(incident: Incident, now: datetime) -> None:
    violations = Violations()
    if incident.category is None:
        violations.add("category", "required: CONFIDENTIALITY, INTEGRITY or AVAILABILITY")
    _check_text(violations, "description", incident.description, MAX_TEXT, required=True)
    _check_text(violations, "reported_by", incident.reported_by, MAX_SHORT_TEXT, required=True)
    _check_text(violations, "contact_point", incident.contact_point, MAX_CONTACT, required=True)
    _check_text(violations, "likely_consequences", incident.likely_consequences, MAX_TEXT)
    _check_text(violations, "measures_taken", incident.measures_taken, MAX_TEXT)
    if incident.discovered_at is None:
        violations.add("discovered_time", "required")
    elif incident.discovered_at > now + CLOCK_SKEW:
        violations.add("discovered_time", "must not be in the future")
    occurred, discovered = incident.occurred_at, incident.discovered_at
    if occurred is not None and discovered is not None and occurred > discovered:
        violations.add("occurred_time", "must not be after discovered_time")
    incident.scope.validate(violations)
    violations.raise_if_any()


def notification_deadline(discovered_at: datetime) -> datetime:
    return discovered_at + NOTIFICATION_WINDOW


@dataclass(frozen=True)
class StatusChange:
    """One entry of an incident's status history (position 1, 2, ... after recording)."""

    position: int
    status: Status
    changed_at: datetime
    changed_by: str
    notified_at: datetime | None = None
    authority_reference: str = ""
    delay_reason: str = ""
    note: str = ""


@dataclass(frozen=True)
class IncidentState:
    """An incident and its history: its status is the last change, OPEN when there is none."""

    incident: Incident
    history: tuple[StatusChange, ...] = ()

    @property
    def status(self) -> Status:
        return self.history[-1].status if self.history else Status.OPEN

    @property
    def notification(self) -> StatusChange | None:
        return next((c for c in self.history if c.status is Status.NOTIFIED), None)

    @property
    def next_position(self) -> int:
        return (self.history[-1].position if self.history else 0) + 1

    def deadline_state(self, now: datetime) -> DeadlineState:
        return deadline_state(self.incident.deadline, self.status, self.notification, now)


def deadline_state(
    deadline: datetime, status: Status, notification: StatusChange | None, now: datetime
) -> DeadlineState:
    if notification is not None and notification.notified_at is not None:
        return DeadlineState.MET if notification.notified_at <= deadline else DeadlineState.MISSED
    if status is Status.CLOSED:
        return DeadlineState.NOT_NOTIFIED
    if now > deadline:
        return DeadlineState.OVERDUE
    if deadline - now <= DUE_SOON_WINDOW:
        return DeadlineState.DUE_SOON
    return DeadlineState.PENDING


@dataclass(frozen=True)
class StatusRequest:
    """A requested status change, as the caller gave it."""

    status: Status | None
    notified_at: datetime | None = None
    authority_reference: str = ""
    delay_reason: str = ""
    note: str = ""


def next_change(state: IncidentState, request: StatusRequest, actor: str, now: datetime) -> StatusChange:
    """The history entry a request adds, or why it may not: OPEN -> NOTIFIED -> CLOSED, or OPEN ->
    CLOSED with a note saying why no notification was due; a notification after the deadline needs
    the reasons for the delay."""
    violations = Violations()
    target = request.status
    if target is None or target is Status.OPEN:
        raise InvalidArgumentError([FieldViolation("status", "required: NOTIFIED or CLOSED")])
    _check_text(violations, "authority_reference", request.authority_reference, MAX_SHORT_TEXT)
    _check_text(violations, "delay_reason", request.delay_reason, MAX_TEXT)
    _check_text(violations, "note", request.note, MAX_TEXT)
    current = state.status
    notified_at: datetime | None = None
    if target is Status.NOTIFIED:
        notified_at = request.notified_at or now
        assert state.incident.discovered_at is not None
        if notified_at > now + CLOCK_SKEW:
            violations.add("notified_time", "must not be in the future")
        elif notified_at < state.incident.discovered_at:
            violations.add("notified_time", "must not be before the incident's discovered_time")
        elif notified_at > state.incident.deadline and not request.delay_reason.strip():
            violations.add("delay_reason", "required: the notification is after the 72-hour deadline")
    else:
        for name in ("notified_at", "authority_reference", "delay_reason"):
            if getattr(request, name):
                path = "notified_time" if name == "notified_at" else name
                violations.add(path, "only for status NOTIFIED")
        if current is Status.OPEN and not request.note.strip():
            violations.add(
                "note", "required when closing an incident that was never notified: why none was due"
            )
    violations.raise_if_any()
    if target is Status.NOTIFIED and current is not Status.OPEN:
        raise TransitionRefusedError(f"the incident is {current.value}: only an open incident is notified")
    if target is Status.CLOSED and current is Status.CLOSED:
        raise TransitionRefusedError("the incident is already closed")
    return StatusChange(
        position=state.next_position,
        status=target,
        changed_at=now,
        changed_by=actor,
        notified_at=notified_at,
        authority_reference=request.authority_reference,
        delay_reason=request.delay_reason,
        note=request.note,
    )


# --- what the breach touched ---------------------------------------------------------------------


@dataclass(frozen=True)
class AffectedPatient:
    patient_id: str
    first_at: datetime
    last_at: datetime
    access_kinds: tuple[Subtype, ...]
    access_count: int
    data_categories: tuple[str, ...]


@dataclass
class _PatientAccesses:
    first_at: datetime
    last_at: datetime
    kinds: set[Subtype] = field(default_factory=set)
    count: int = 0
    categories: set[str] = field(default_factory=set)


def patients_of(event: AuditEvent) -> set[str]:
    """Every patient an event refers to: its patient and its entities' patients."""
    found = {event.patient_id} if event.patient_id else set()
    found.update(entity.patient_id for entity in event.entities if entity.patient_id)
    return found


def records_of(event: AuditEvent) -> set[tuple[str, str]]:
    """Every record (resource type, id) an event names."""
    found = {(event.resource_type, event.resource_id)} if event.resource_id else set()
    found.update((e.resource_type, e.resource_id) for e in event.entities if e.resource_id)
    return found


class ImpactTally:
    """Counts what a breach touched, fed the audit events of its scope one at a time (memory grows
    with the patients and records touched, not with the events). Only successful accesses count: a
    refused or failed call disclosed nothing."""

    def __init__(self) -> None:
        self._patients: dict[str, _PatientAccesses] = {}
        self._records: set[tuple[str, str]] = set()
        self._categories: set[str] = set()
        self.access_events = 0

    def feed(self, event: AuditEvent) -> None:
        if event.outcome is not Outcome.SUCCESS or event.occurred_at is None:
            return
        patients = patients_of(event)
        if not patients:
            return
        self.access_events += 1
        self._records.update(records_of(event))
        categories = {event.resource_type} if event.resource_type else set()
        categories.update(e.resource_type for e in event.entities if e.resource_type)
        self._categories.update(categories)
        moment = event.occurred_at
        for patient_id in patients:
            accesses = self._patients.get(patient_id)
            if accesses is None:
                accesses = self._patients[patient_id] = _PatientAccesses(moment, moment)
            accesses.first_at = min(accesses.first_at, moment)
            accesses.last_at = max(accesses.last_at, moment)
            accesses.count += 1
            if event.subtype is not None:
                accesses.kinds.add(event.subtype)
            accesses.categories.update(categories)

    def feed_all(self, events: Iterable[AuditEvent]) -> ImpactTally:
        for event in events:
            self.feed(event)
        return self

    @property
    def patient_count(self) -> int:
        return len(self._patients)

    @property
    def record_count(self) -> int:
        return len(self._records)

    @property
    def data_categories(self) -> list[str]:
        return sorted(self._categories)

    def patients(self, after_patient_id: str = "", limit: int | None = None) -> list[AffectedPatient]:
        """Affected patients ordered by id, those after ``after_patient_id`` only."""
        ids = sorted(p for p in self._patients if p > after_patient_id)
        return [self._affected(p) for p in (ids if limit is None else ids[:limit])]

    def _affected(self, patient_id: str) -> AffectedPatient:
        accesses = self._patients[patient_id]
        return AffectedPatient(
            patient_id=patient_id,
            first_at=accesses.first_at,
            last_at=accesses.last_at,
            access_kinds=tuple(sorted(accesses.kinds, key=lambda kind: kind.value)),
            access_count=accesses.count,
            data_categories=tuple(sorted(accesses.categories)),
        )


# --- the notification ----------------------------------------------------------------------------


def _instant(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def notification_document(
    state: IncidentState, tally: ImpactTally, now: datetime, delay_reason: str = ""
) -> dict[str, Any]:
    """What the authority is told: nature of the breach, categories and approximate number of data
    subjects and records, contact point, likely consequences, measures taken or proposed, and the
    reasons for the delay when the notification is late (then required)."""
    incident = state.incident
    notification = state.notification
    deadline_now = state.deadline_state(now)
    late = deadline_now in (DeadlineState.OVERDUE, DeadlineState.MISSED)
    reason = (notification.delay_reason if notification else "") or delay_reason
    if late and not reason.strip():
        raise InvalidArgumentError(
            [FieldViolation("delay_reason", "required: the notification is after the 72-hour deadline")]
        )
    violations = Violations()
    _check_text(violations, "delay_reason", delay_reason, MAX_TEXT)
    violations.raise_if_any()
    assert incident.category is not None
    scope = incident.scope
    return {
        "kind": "personal-data-breach-notification",
        "legal_basis": LEGAL_BASIS,
        "recipient": AUTHORITY,
        "incident_id": incident.incident_id,
        "generated_time": _instant(now),
        "nature": {
            "category": incident.category.value,
            "description": incident.description,
            "occurred_time": _instant(incident.occurred_at),
            "discovered_time": _instant(incident.discovered_at),
            "reported_by": incident.reported_by,
            "scope": {
                "actor_id": scope.actor_id or None,
                "facility_code": scope.facility_code or None,
                "start_time": _instant(scope.start),
                "end_time": _instant(scope.end),
            },
        },
        "data_subjects": {
            "categories": [DATA_SUBJECT_CATEGORY],
            "approximate_number": tally.patient_count,
        },
        "personal_data": {
            "categories": tally.data_categories,
            "approximate_number_of_records": tally.record_count,
            "access_events": tally.access_events,
        },
        "contact_point": incident.contact_point,
        "likely_consequences": incident.likely_consequences,
        "measures_taken_or_proposed": incident.measures_taken,
        "notification_deadline": _instant(incident.deadline),
        "deadline_state": deadline_now.value,
        "reasons_for_delay": reason if late else None,
    }


_TEXT_ROWS: Sequence[tuple[str, Sequence[str]]] = (
    ("Incident", ("incident_id",)),
    ("Legal basis", ("legal_basis",)),
    ("To", ("recipient",)),
    ("Generated", ("generated_time",)),
    ("Category of breach", ("nature", "category")),
    ("Nature of the breach", ("nature", "description")),
    ("Occurred", ("nature", "occurred_time")),
    ("Discovered", ("nature", "discovered_time")),
    ("Reported by", ("nature", "reported_by")),
    ("Scope: actor", ("nature", "scope", "actor_id")),
    ("Scope: facility", ("nature", "scope", "facility_code")),
    ("Scope: from", ("nature", "scope", "start_time")),
    ("Scope: until", ("nature", "scope", "end_time")),
    ("Categories of data subjects", ("data_subjects", "categories")),
    ("Approximate number of data subjects", ("data_subjects", "approximate_number")),
    ("Categories of personal data", ("personal_data", "categories")),
    ("Approximate number of records", ("personal_data", "approximate_number_of_records")),
    ("Audited accesses", ("personal_data", "access_events")),
    ("Contact point", ("contact_point",)),
    ("Likely consequences", ("likely_consequences",)),
    ("Measures taken or proposed", ("measures_taken_or_proposed",)),
    ("Notification deadline (discovery + 72 h)", ("notification_deadline",)),
    ("Deadline state", ("deadline_state",)),
    ("Reasons for the delay", ("reasons_for_delay",)),
)


def notification_text(document: dict[str, Any]) -> str:
    """The notification as readable text, one labelled entry per item of the document."""
    lines = ["NOTIFICATION OF A PERSONAL DATA PROTECTION VIOLATION", ""]
    for label, path in _TEXT_ROWS:
        value: Any = document
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, list):
            value = ", ".join(str(item) for item in value) or "none"
        missing = "none: within the deadline" if path == ("reasons_for_delay",) else "not known"
        shown = missing if value is None or value == "" else str(value)
        lines.append(f"{label}: {shown}")
    return "\n".join(lines) + "\n"
