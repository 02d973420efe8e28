"""Clinical records domain: encounters and the change feed. Pure; no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from emr_runtime.errors import Violations
from emr_runtime.facility import is_facility_code, normalize_facility_code
from emr_runtime.idempotency import check_request_id

MAX_REASON_LENGTH = 1000
# Clocks of hospital systems drift; a start a few minutes ahead of ours is not an error.
FUTURE_TOLERANCE = timedelta(minutes=5)


class EncounterClass(enum.Enum):
    OUTPATIENT = "outpatient"
    INPATIENT = "inpatient"
    EMERGENCY = "emergency"
    DAY_CARE = "day-care"


class EncounterStatus(enum.Enum):
    PLANNED = "planned"
    IN_PROGRESS = "in-progress"
    FINISHED = "finished"
    CANCELLED = "cancelled"


class ChangeKind(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"


@dataclass(frozen=True)
class EncounterInput:
    """A CreateEncounter request as received; enums are None when the value is unknown."""

    request_id: str
    patient_id: str
    facility_code: str
    encounter_class: EncounterClass | None
    status: EncounterStatus | None
    start_time: datetime | None
    end_time: datetime | None
    reason: str
    fingerprint: str


@dataclass(frozen=True)
class Encounter:
    encounter_id: str
    patient_id: str
    facility_code: str
    encounter_class: EncounterClass
    status: EncounterStatus
    start_time: datetime
    end_time: datetime | None
    reason: str
    version: int
    created_at: datetime
    request_fingerprint: str


@dataclass(frozen=True)
class Change:
    """One committed change; a tombstone fills a feed position whose write never completed."""

    sequence: int
    kind: ChangeKind | None
    resource_type: str
    resource_id: str
    resource_version: int
    patient_id: str
    facility_code: str
    committed_at: datetime
    tombstone: bool = False


def validate_encounter(raw: EncounterInput, encounter_id: str, now: datetime) -> Encounter:
    violations = Violations()
    check_request_id(violations, raw.request_id)
    if not raw.patient_id.strip():
        violations.add("patient_id", "required")
    facility_code = normalize_facility_code(raw.facility_code)
    if not is_facility_code(facility_code):
        violations.add("facility_code", "the 5-character code of the facility")
    if raw.encounter_class is None:
        violations.add("encounter_class", "required: OUTPATIENT, INPATIENT, EMERGENCY or DAY_CARE")
    if raw.status is None:
        violations.add("status", "required: PLANNED, IN_PROGRESS, FINISHED or CANCELLED")
    if raw.start_time is None:
        violations.add("start_time", "required")
    elif raw.start_time > now + FUTURE_TOLERANCE:
        violations.add("start_time", "is in the future")
    if raw.end_time is not None:
        if raw.start_time is not None and raw.end_time < raw.start_time:
            violations.add("end_time", "is before start_time")
        elif raw.end_time > now + FUTURE_TOLERANCE:
            violations.add("end_time", "is in the future")
    if raw.status is EncounterStatus.FINISHED and raw.end_time is None:
        violations.add("end_time", "required when status is FINISHED")
    reason = raw.reason.strip()
    if len(reason) > MAX_REASON_LENGTH:
        violations.add("reason", f"at most {MAX_REASON_LENGTH} characters")
    violations.raise_if_any()
    assert raw.encounter_class is not None and raw.status is not None and raw.start_time is not None
    return Encounter(
        encounter_id=encounter_id,
        patient_id=raw.patient_id.strip(),
        facility_code=facility_code,
        encounter_class=raw.encounter_class,
        status=raw.status,
        start_time=raw.start_time,
        end_time=raw.end_time,
        reason=reason,
        version=1,
        created_at=now,
        request_fingerprint=raw.fingerprint,
    )


@dataclass(frozen=True)
class FeedPlan:
    """What a feed read can hand out now, and which holes are old enough to fill with tombstones."""

    ready: tuple[Change, ...]
    holes_to_close: tuple[int, ...]


def plan_feed(after: int, changes: list[Change], now: datetime, settle: timedelta) -> FeedPlan:
    """Changes are handed out only as a run without holes, so a consumer that resumes from its
    cursor never skips a write that commits late. A hole (a sequence allocated but not yet written)
    blocks the run until a later change is older than ``settle``: the writer of the hole has then
    long given up, and the hole is closed with a tombstone (a late write then fails and retries
    under a new sequence)."""
    ready: list[Change] = []
    expected = after + 1
    for change in changes:
        if change.sequence != expected:
            if now - change.committed_at < settle:
                break
            return FeedPlan(tuple(ready), tuple(range(expected, change.sequence)))
        ready.append(change)
        expected += 1
    return FeedPlan(tuple(ready), ())


def check_feed_request(after_sequence: int, limit: int) -> int:
    violations = Violations()
    if after_sequence < 0:
        violations.add("after_sequence", "must not be negative")
    if limit < 0 or limit > 1000:
        violations.add("limit", "must be between 0 and 1000")
    violations.raise_if_any()
    return limit or 100
